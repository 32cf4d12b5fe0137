"""The vectorised Lagrange coefficients (inverse table for small client ids,
batched Fermat inversion otherwise) are the exact field values: checked
against Python-int interpolation, and by reconstructing shared secrets."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.hazmat import shamir
from securefl.hazmat.randomness import default_random

P = shamir.PRIME


def _reference(base: list[int], x: int) -> list[int]:
    out = []
    for i, xi in enumerate(base):
        num = den = 1
        for j, xj in enumerate(base):
            if i != j:
                num = num * (x - xj) % P
                den = den * (xi - xj) % P
        out.append(num * pow(den, -1, P) % P)
    return out


points = st.one_of(st.integers(1, 300), st.integers(1, shamir.TABLE_POINTS + 50),
                   st.integers(1, P - 1))


@pytest.mark.parametrize("table", [True, False])
@settings(max_examples=80, deadline=None)
@given(holders=st.lists(points, min_size=1, max_size=30, unique=True), data=st.data())
def test_coefficients_are_exact(table: bool, holders: list[int], data: st.DataObject) -> None:
    if not table:  # every point above the table: the batched Fermat path
        holders = [P - h for h in holders]
    t = data.draw(st.integers(1, len(holders)))
    rec = shamir.Reconstructor(holders, t)
    base, extra = holders[:t], holders[t:]
    assert [int(c) for c in rec._lam0] == _reference(base, 0)
    assert [[int(c) for c in row] for row in rec._lam_extra] == \
        [_reference(base, x) for x in extra]


@settings(max_examples=40, deadline=None)
@given(st.lists(points, min_size=2, max_size=40, unique=True), st.data())
def test_shared_secrets_come_back(holders: list[int], data: st.DataObject) -> None:
    t = data.draw(st.integers(1, len(holders)))
    secrets = [os.urandom(32) for _ in range(3)]
    rng = default_random(None)
    shares = shamir.split(secrets, holders, t, rng)
    order = data.draw(st.permutations(range(len(holders))))
    picked = [holders[i] for i in order]
    arr = shares[list(order)]
    assert shamir.Reconstructor(picked, t).reconstruct(arr, rng) == secrets
