"""The bad-share search of one reconstruction call is bounded in total, not
per secret: known bad holders are left out of every failing secret at once
(all of them while t holders remain, else each set of ``radius`` of them),
a full :func:`shamir.locate` runs only for a secret with a bad holder not yet
known, and one :class:`shamir.SearchBudget` per call caps the rest.  The work
is counted (calls and candidates), never timed; the results stay exact: the
right secrets, exactly the forgers of each secret blamed, or a typed abort."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_harness import Federation

from securefl.errors import AbortError, Rule, SecureFLError
from securefl.hazmat import shamir
from securefl.hazmat.randomness import SystemRandom
from securefl.protocol import SecAggConfig

RNG = SystemRandom()
P = shamir.PRIME


class _Counts:
    """Counts the full searches, the leave-out passes (and the secrets they
    cover) and every candidate paid from a budget."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.locate = 0
        self.passes = 0
        self.pass_secrets = 0
        self.candidates = 0
        locate, without, spend = shamir.locate, shamir._without, shamir.SearchBudget.spend

        def counting_locate(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.locate += 1
            return locate(*args, **kwargs)

        def counting_without(holders, y, *args, **kwargs):  # type: ignore[no-untyped-def]
            self.passes += 1
            self.pass_secrets += y.shape[1]
            return without(holders, y, *args, **kwargs)

        def counting_spend(budget, count, *, index):  # type: ignore[no-untyped-def]
            spend(budget, count, index=index)
            self.candidates += count

        monkeypatch.setattr(shamir, "locate", counting_locate)
        monkeypatch.setattr(shamir, "_without", counting_without)
        monkeypatch.setattr(shamir.SearchBudget, "spend", counting_spend)


def _forge(t: int, extra: int, secrets: int, bad_rows: list[tuple[int, ...]]
           ) -> tuple[list[int], np.ndarray, list[bytes]]:
    """Shares of ``secrets`` random secrets to ``t + extra`` holders (ids 1..),
    secret ``s`` with the shares of rows ``bad_rows[s % len(bad_rows)]``
    moved by +1 in one limb (still field elements, still 16-bit secrets)."""
    holders = list(range(1, t + extra + 1))
    values = [os.urandom(32) for _ in range(secrets)]
    shares = shamir.split(values, holders, t, RNG).astype(np.uint64)
    for s in range(secrets):
        for row in bad_rows[s % len(bad_rows)]:
            shares[row, s, s % shamir.LIMBS] = (shares[row, s, s % shamir.LIMBS] + 1) % P
    return holders, shares, values


def _expected_blame(holders: list[int], secrets: int, bad_rows: list[tuple[int, ...]]
                    ) -> dict[int, tuple[int, ...]]:
    return {s: tuple(sorted(holders[r] for r in bad_rows[s % len(bad_rows)]))
            for s in range(secrets) if bad_rows[s % len(bad_rows)]}


@pytest.mark.parametrize("forgers", [3, 6])
def test_more_forgers_than_the_radius_cost_a_search_per_forger_not_per_secret(
        monkeypatch: pytest.MonkeyPatch, forgers: int) -> None:
    # H = t + 4: radius 2; 3 forgers fit into H - t (all left out at once),
    # 6 do not (every pair of them is left out in turn); every pair of forgers
    # forges its shares of some secrets, 2 bad shares per secret (<= radius)
    t, extra, secrets = 40, 4, 120
    rows = list(range(5, 5 + forgers))
    pairs = list(itertools.combinations(rows, 2))
    holders, shares, values = _forge(t, extra, secrets, pairs)
    commitments = [hashlib.sha256(v).digest() for v in values]
    verified = [0]

    def verify(i: int, value: bytes) -> bool:
        verified[0] += 1
        return hashlib.sha256(value).digest() == commitments[i]

    counts = _Counts(monkeypatch)
    got = shamir.Reconstructor(holders, t).reconstruct_verified(shares, verify, RNG)
    assert got.secrets == values
    assert got.excluded == _expected_blame(holders, secrets, pairs)
    # a full search only for a secret with a forger not yet known: each one
    # names a new forger (the first names two)
    assert counts.locate <= forgers - 1
    # the leave-out passes: one per new set of known forgers, plus the pairs of
    # them once they no longer fit into H - t
    assert counts.passes <= forgers + len(pairs)
    assert counts.pass_secrets <= (forgers + len(pairs)) * secrets
    # candidates: a few full searches plus O(secrets) -- never a search per secret
    assert counts.candidates <= shamir.SearchBudget(t, secrets).total
    assert counts.candidates <= (forgers - 1) * (t + 2 + shamir.MAX_CANDIDATES) \
        + (forgers + len(pairs)) * secrets
    assert counts.candidates < secrets * (t + 1)  # what one search per secret would cost
    assert verified[0] <= secrets + counts.candidates


def test_the_budget_is_shared_by_every_group_of_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # the same forgers in many groups: found once, left out of the others
    t, extra = 30, 4
    groups, truth, pairs = [], [], [(5, 6), (5, 7), (6, 7)]
    for _ in range(12):
        holders, shares, values = _forge(t, extra, 3, pairs)
        groups.append((holders, shares))
        truth.append(values)
    counts = _Counts(monkeypatch)
    got = shamir.reconstruct_verified_groups(groups, t, lambda g, i, v: v == truth[g][i], RNG)
    assert [g.secrets for g in got] == truth
    assert all(g.excluded == _expected_blame(groups[0][0], 3, pairs) for g in got)
    assert counts.locate <= 2
    assert counts.candidates <= shamir.SearchBudget(t, 36).total


def test_an_exhausted_budget_raises_typed_and_names_nobody(
        monkeypatch: pytest.MonkeyPatch) -> None:
    t, extra, secrets = 20, 4, 10
    holders, shares, values = _forge(t, extra, secrets, [(3, 4), (5, 6)])
    monkeypatch.setattr(shamir, "MAX_SEARCHES", 0)
    monkeypatch.setattr(shamir, "BATCH_PASSES", 0)
    monkeypatch.setattr(shamir, "SHALLOW_SEARCHES", 0)
    suspects: set[int] = set()
    with pytest.raises(shamir.SearchBudgetExceededError) as info:
        shamir.Reconstructor(holders, t).reconstruct_verified(
            shares, lambda i, v: v == values[i], RNG, suspects)
    assert isinstance(info.value, shamir.UnverifiableSecretError)
    assert isinstance(info.value, SecureFLError)
    assert info.value.index == 0
    assert "budget" in str(info.value)
    assert suspects == set()


def _unmasking_with_forgers(forgers: tuple[int, ...], silent: set[int]) -> Federation:
    """n=40 semi-honest, default t; the clients in ``silent`` do not answer the
    unmasking request; every pair of ``forgers`` alters its shares of some
    survivors' self-mask seeds (two bad shares per seed)."""
    cfg = SecAggConfig(num_clients=40, vector_length=8, bits=16)
    fed = Federation(cfg)
    fed.advertise()
    fed.step()
    fed.step()
    replies = {c: fed.clients[c].handle(m) for c, m in fed.pending.items() if c not in silent}
    pairs = list(itertools.combinations(forgers, 2))
    for i, owner in enumerate(sorted(replies[1].self_mask_shares)):
        for f in pairs[i % len(pairs)]:
            r = replies[f]
            share = bytearray(r.self_mask_shares[owner])
            share[0] ^= 1
            replies[f] = dataclasses.replace(r, self_mask_shares={
                **r.self_mask_shares, owner: bytes(share)})
    for r in replies.values():
        fed.server.receive(r)
    return fed


def test_server_locates_more_forgers_than_the_radius_with_few_searches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 25 responders, t = 21: radius 2; 3 forgers
    fed = _unmasking_with_forgers((2, 3, 4), set(range(26, 41)))
    counts = _Counts(monkeypatch)
    fed.close()
    assert (fed.result.total == fed.expected_sum()).all()
    assert {b.peer for b in fed.result.blame} == {2, 3, 4}
    assert {b.rule for b in fed.result.blame} == {Rule.FORGED_SHARE}
    assert counts.locate <= 2


def test_server_aborts_typed_when_the_search_budget_runs_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fed = _unmasking_with_forgers((2, 3, 4), set(range(26, 41)))
    monkeypatch.setattr(shamir, "MAX_SEARCHES", 0)
    monkeypatch.setattr(shamir, "BATCH_PASSES", 0)
    monkeypatch.setattr(shamir, "SHALLOW_SEARCHES", 0)
    with pytest.raises(AbortError) as info:
        fed.close()
    assert info.value.rule is Rule.COMMITMENT_MISMATCH
    assert Rule.COMMITMENT_MISMATCH.value in str(info.value)
    assert "budget" in str(info.value)


@settings(max_examples=80, deadline=None)
@given(data=st.data(), t=st.integers(2, 7), extra=st.integers(1, 5),
       secrets=st.integers(1, 6))
def test_any_forger_set_gives_the_exact_secrets_and_blame_or_a_typed_abort(
        data: st.DataObject, t: int, extra: int, secrets: int) -> None:
    h = t + extra
    radius = (h - t + 1) // 2
    # forger sets up to and beyond the radius (and beyond H - t)
    forgers = data.draw(st.lists(st.integers(0, h - 1), max_size=min(h, radius + 4),
                                 unique=True))
    holders = sorted(data.draw(st.lists(st.integers(1, 5000), min_size=h, max_size=h,
                                        unique=True)))
    values = [os.urandom(32) for _ in range(secrets)]
    shares = shamir.split(values, holders, t, RNG).astype(np.uint64)
    bad: dict[int, tuple[int, ...]] = {}
    for s in range(secrets):
        rows = data.draw(st.lists(st.sampled_from(forgers), unique=True)) if forgers else []
        for row in rows:
            limb = data.draw(st.integers(0, shamir.LIMBS - 1))
            delta = data.draw(st.integers(1, P - 1))
            shares[row, s, limb] = (shares[row, s, limb] + delta) % P
        if rows:
            bad[s] = tuple(sorted(holders[r] for r in rows))
    suspects: set[int] = set()
    try:
        got = shamir.Reconstructor(holders, t).reconstruct_verified(
            shares, lambda i, v: v == values[i], RNG, suspects)
    except shamir.UnverifiableSecretError as exc:
        assert isinstance(exc, SecureFLError)
        # only when some secret cannot be decoded (too many bad shares)
        assert any(len(b) > radius for b in bad.values())
        assert suspects <= {holders[r] for r in forgers}
        return
    assert got.secrets == values
    assert got.excluded == bad
    assert suspects <= {holders[r] for r in forgers}
