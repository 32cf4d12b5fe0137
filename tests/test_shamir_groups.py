"""The batched reconstruction of many holder groups
(``shamir.reconstruct_verified_groups``, what the server runs at R4) gives
exactly what one ``Reconstructor.reconstruct_verified`` per group gives: the
same secrets, the same holders excluded, the same error for the same secret,
whatever the forgers do; and the batched Lagrange weights equal the
per-group ones on both the table and the Fermat paths."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.errors import ConfigurationError, InconsistentSharesError
from securefl.hazmat import shamir
from securefl.hazmat.randomness import SystemRandom

RNG = SystemRandom()
P = shamir.PRIME


def _one_by_one(groups: list[tuple[list[int], np.ndarray]], t: int,
                truth: list[list[bytes]]) -> list[shamir.VerifiedSecrets] | tuple[str, int, int]:
    """The reference: one Reconstructor per group, in order, one suspect set."""
    suspects: set[int] = set()
    out = []
    for g, (holders, shares) in enumerate(groups):
        try:
            out.append(shamir.Reconstructor(holders, t).reconstruct_verified(
                shares, lambda i, v, g=g: v == truth[g][i], RNG, suspects))
        except shamir.UnverifiableSecretError as exc:
            return ("unverifiable", g, exc.index)
    return out


def _batched(groups: list[tuple[list[int], np.ndarray]], t: int,
             truth: list[list[bytes]]) -> list[shamir.VerifiedSecrets] | tuple[str, int, int]:
    try:
        return shamir.reconstruct_verified_groups(
            groups, t, lambda g, i, v: v == truth[g][i], RNG, set())
    except shamir.UnverifiableSecretError as exc:
        return ("unverifiable", exc.group, exc.index)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), t=st.integers(1, 6), count=st.integers(1, 8),
       secrets=st.integers(1, 3))
def test_batched_groups_equal_one_reconstructor_per_group(
        data: st.DataObject, t: int, count: int, secrets: int) -> None:
    groups: list[tuple[list[int], np.ndarray]] = []
    truth: list[list[bytes]] = []
    for _ in range(count):
        # few distinct sizes, so that groups share a batch
        size = t + data.draw(st.integers(0, 3))
        holders = data.draw(st.lists(st.integers(1, 3000), min_size=size, max_size=size,
                                     unique=True))
        values = [os.urandom(32) for _ in range(secrets)]
        shares = shamir.split(values, holders, t, RNG).astype(np.uint64)
        # the adversary: some holders forge some of their shares (a small
        # shift or garbage), possibly more than can be located
        for h in data.draw(st.sets(st.integers(0, size - 1), max_size=2)):
            s = data.draw(st.integers(0, secrets - 1))
            limb = data.draw(st.integers(0, shamir.LIMBS - 1))
            delta = data.draw(st.sampled_from([1, P - 1, 1 << 16, 12345]))
            shares[h, s, limb] = (shares[h, s, limb] + delta) % P
        groups.append((holders, shares))
        truth.append(values)
    expected = _one_by_one(groups, t, truth)
    got = _batched(groups, t, truth)
    if isinstance(expected, tuple):
        assert got == expected
        return
    assert isinstance(got, list)
    assert [f.secrets for f in got] == [f.secrets for f in expected]
    assert [f.excluded for f in got] == [f.excluded for f in expected]
    for f, values in zip(got, truth, strict=True):
        assert f.secrets == values  # every returned secret passed verify


def test_a_forged_share_among_many_groups_is_located_by_the_single_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shamir, "_GROUP_BATCH", 16)  # three batches of one size
    t, groups, truth = 5, [], []
    for g in range(40):
        holders = [1 + g + 7 * i for i in range(t + 2)]
        values = [os.urandom(32)]
        groups.append((holders, shamir.split(values, holders, t, RNG).astype(np.uint64)))
        truth.append(values)
    groups[17][1][3, 0, 0] = (groups[17][1][3, 0, 0] + 1) % P  # holder index 3 forges
    found = shamir.reconstruct_verified_groups(
        groups, t, lambda g, i, v: v == truth[g][i], RNG, set())
    assert [f.secrets for f in found] == truth
    assert {g: f.excluded for g, f in enumerate(found) if f.excluded} == {
        17: {0: (groups[17][0][3],)}}


def test_a_forged_share_at_exactly_t_names_its_group_and_secret() -> None:
    t, groups, truth = 4, [], []
    for g in range(10):
        holders = [2 + g + 11 * i for i in range(t)]
        values = [os.urandom(32), os.urandom(32)]
        groups.append((holders, shamir.split(values, holders, t, RNG).astype(np.uint64)))
        truth.append(values)
    groups[6][1][0, 1, 2] = (groups[6][1][0, 1, 2] + 1) % P
    with pytest.raises(shamir.UnverifiableSecretError) as info:
        shamir.reconstruct_verified_groups(groups, t, lambda g, i, v: v == truth[g][i],
                                           RNG, set())
    assert (info.value.group, info.value.index) == (6, 1)


def test_refusals_of_the_single_path_are_kept() -> None:
    values = [os.urandom(32)]
    good = ([1, 2, 3], shamir.split(values, [1, 2, 3], 2, RNG).astype(np.uint64))
    not_field = ([4, 5, 6], good[1].copy())
    not_field[1][1, 0, 0] = P  # not a field element
    with pytest.raises(InconsistentSharesError):
        shamir.reconstruct_verified_groups([good, not_field], 2, lambda g, i, v: True, RNG)
    repeated = ([7, 7, 8], good[1])
    with pytest.raises(ConfigurationError):
        shamir.reconstruct_verified_groups([good, repeated], 2, lambda g, i, v: True, RNG)
    few = ([1], good[1][:1])
    with pytest.raises(ConfigurationError):
        shamir.reconstruct_verified_groups([good, few], 2, lambda g, i, v: True, RNG)


@pytest.mark.parametrize("table", [0, shamir.TABLE_POINTS])
@settings(max_examples=25, deadline=None)
@given(data=st.data(), t=st.integers(1, 8), extra=st.integers(0, 4), count=st.integers(1, 6))
def test_batched_lagrange_weights_equal_the_per_group_ones(
        table: int, data: st.DataObject, t: int, extra: int, count: int) -> None:
    rows = [data.draw(st.lists(st.integers(1, 70_000), min_size=t + extra,
                               max_size=t + extra, unique=True)) for _ in range(count)]
    xs = np.array(rows, dtype=np.uint64)
    saved = shamir.TABLE_POINTS
    shamir.TABLE_POINTS = table  # not monkeypatch: hypothesis reruns the body
    try:
        lam0, lam_extra = shamir._lagrange(xs[:, :t], xs[:, t:])
        single = [shamir._lagrange(row[:t], row[t:]) for row in xs]
    finally:
        shamir.TABLE_POINTS = saved
    for k, (l0, le) in enumerate(single):
        assert np.array_equal(lam0[k], l0)
        assert np.array_equal(lam_extra[k], le)
        # and the textbook formula, in Python integers
        base = rows[k][:t]
        for e, x in enumerate([0, *rows[k][t:]]):
            for i, xi in enumerate(base):
                num = den = 1
                for j, xj in enumerate(base):
                    if j != i:
                        num, den = num * (x - xj) % P, den * (xi - xj) % P
                want = num * pow(den, P - 2, P) % P
                assert int(lam0[k, i] if e == 0 else lam_extra[k, e - 1, i]) == want
