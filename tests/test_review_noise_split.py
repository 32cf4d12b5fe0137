"""Adversarial review of the noise extension: a three-way split survivor list
in semi-honest mode strips kept excess noise although ``2t`` exceeds the
holders.

SECURITY.md ("Distributed noise in the sum") and SPEC.md [NZ-8] claim: "A
split survivor list cannot both strip extra excess and unmask the sum when
``2t`` exceeds the holders".  The argument there considers one longer list
against the true one.  But a seed is reconstructable as soon as the holders
that answered *any* list selecting it number ``t``, and each dropped client's
masking key only needs ``t`` holders that were told it dropped.  With three
dropped clients ``d_1, d_2, d_3`` and three groups ``G_i`` of survivors, group
``G_i`` is told that ``d_i`` survived (a list one longer, so the rule removes
more).  Every ``d_i`` is called dropped by two groups (>= t holders: its
masking key is recovered and the sum unmasks); every pair removed by two of
the three longer lists is revealed by >= t holders.  The server ends with a
correct, fully unmasked sum whose noise variance is below the target ``V``.

REAL HOLE (fixed): the attack succeeded against the code as reviewed.  The
fix ([NZ-1b]) refuses a removable plan in semi-honest mode up front:
``test_the_split_configuration_is_refused_up_front``.  The attack below is
kept and run (1) with the refusal switched off, proving the rule is needed,
and (2) against ``NoisePlan.calibrate_to_threshold``, which semi-honest mode
accepts and which keeps ``>= V`` under the same split (it has nothing
removable).  In active mode the split lists carry no quorum of signatures and
are refused (``tests/test_review_noise_confirmed.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from securefl import SecAggConfig
from securefl.errors import ConfigurationError
from securefl.hazmat import noise, shamir
from securefl.hazmat.agreement import KeyPair, matches_public
from securefl.hazmat.randomness import DeterministicRandom
from securefl.protocol import config as config_module
from securefl.protocol import derivation as d
from securefl.protocol.client import ClientSession
from securefl.protocol.messages import UnmaskingRequest, UnmaskingResponse
from securefl.protocol.noise import NoisePlan
from tests.protocol_harness import Federation

N, T, M, BITS = 17, 9, 16, 48
V = 1e6
SURVIVORS = tuple(range(1, 15))
DROPPED = (15, 16, 17)
# pairwise sums of group sizes are >= t = 9, so every "dropped" label reaches t
GROUPS = ((1, 2, 3, 4, 5), (6, 7, 8, 9, 10), (11, 12, 13, 14))


def _centred(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.int64) & ((1 << BITS) - 1)
    return np.where(v >= 1 << (BITS - 1), v - (1 << BITS), v)


def test_the_split_configuration_is_refused_up_front() -> None:
    """The fix: a removable plan in semi-honest mode never runs."""
    with pytest.raises(ConfigurationError, match=r"ACTIVE.*calibrate_to_threshold"):
        SecAggConfig(N, M, bits=BITS, threshold=T, noise=NoisePlan(V, tolerance=1e-3))


def test_without_the_refusal_three_way_split_strips_excess_below_the_target(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the refusal is needed: with [NZ-1b] switched off the attack works."""
    monkeypatch.setattr(config_module, "_check_noise_mode", lambda *args: None)
    config = SecAggConfig(N, M, bits=BITS, threshold=T, noise=NoisePlan(V, tolerance=1e-3))
    layout = config.noise_layout
    assert layout is not None and layout.components == 3
    left, stripped_kept = _three_way_split(config)
    assert stripped_kept  # pairs the rule keeps for the true list were stripped
    assert left < Fraction(V) and float(left / Fraction(V)) < 0.95


def test_the_threshold_plan_keeps_the_target_under_the_same_split() -> None:
    """The semi-honest alternative the refusal names: nothing is removable."""
    config = SecAggConfig(N, M, bits=BITS, threshold=T,
                          noise=NoisePlan.calibrate_to_threshold(V))
    left, stripped_kept = _three_way_split(config)
    assert not stripped_kept
    assert left >= Fraction(V)


def _three_way_split(config: SecAggConfig) -> tuple[Fraction, set[tuple[int, int]]]:
    """Run the attack; return the variance of the noise left in the unmasked
    sum and the pairs stripped that the rule keeps for the true list."""
    assert 2 * config.t > len(SURVIVORS)  # the documented precondition: 2t > holders
    layout = config.noise_layout
    assert layout is not None
    gen = np.random.default_rng(7)
    inputs = {c: gen.integers(0, 1000, M, dtype=np.uint64) for c in config.ids}
    added: dict[int, np.ndarray] = {}
    original = ClientSession._add_noise

    def spy(self: ClientSession, masked: np.ndarray) -> None:
        before = masked.astype(np.int64)
        original(self, masked)
        added[self.client_id] = masked.astype(np.int64) - before

    ClientSession._add_noise = spy  # type: ignore[method-assign]
    try:
        fed = Federation(config, inputs)
        fed.advertise()
        fed.step()
        fed.step(skip=set(DROPPED))  # 15, 16, 17 shared keys, then dropped
    finally:
        ClientSession._add_noise = original  # type: ignore[method-assign]
    server = fed.server
    sid = server.session_id
    assert sid is not None
    # -- the malicious server: group i is told that DROPPED[i] survived --------
    responses: dict[int, UnmaskingResponse] = {}
    for group, liar in zip(GROUPS, DROPPED, strict=True):
        listed = tuple(sorted((*SURVIVORS, liar)))
        for c in group:
            req = fed.pending[c]
            assert isinstance(req, UnmaskingRequest) and req.survivors == SURVIVORS
            lie = dataclasses.replace(req, survivors=listed,
                                      dropped=tuple(x for x in DROPPED if x != liar),
                                      noise_removals=layout.removals(listed))
            responses[c] = fed.clients[c].handle(lie)  # every honest client answers
    rng = DeterministicRandom(hashlib.sha256(b"review").digest())

    def recover(kind: str, secret: tuple[int, int] | int) -> bytes | None:
        field = {"self": "self_mask_shares", "key": "key_shares", "noise": "noise_shares"}[kind]
        got = {h: getattr(r, field)[secret] for h, r in responses.items()
               if secret in getattr(r, field)}
        if len(got) < T:
            return None
        holders = sorted(got)
        return shamir.reconstruct(holders, [got[h] for h in holders], T, rng)

    seeds = {s: recover("self", s) for s in SURVIVORS}
    keys = {x: recover("key", x) for x in DROPPED}
    assert all(seeds.values()) and all(keys.values())  # everything needed to unmask
    for s, seed in seeds.items():
        assert d.seed_commitment(server._digest, s, seed) == server._advert(s).seed_commitment
    for x, key in keys.items():
        assert matches_public(key, server._advert(x).masking_key)
    votes: Counter[tuple[int, int]] = Counter()
    for r in responses.values():
        votes.update(r.noise_shares.keys())
    stripped = {}
    for pair, count in votes.items():
        if count >= T:
            seed = recover("noise", pair)
            assert seed is not None
            v, j = pair
            assert d.noise_seed_commitment(server._digest, v, j, seed) == \
                server._advert(v).noise_commitments[j]
            stripped[pair] = seed
    # -- unmask the real sum with the recovered secrets -------------------------
    jobs = [(d.self_mask_key(seeds[s], sid, s), True) for s in SURVIVORS]  # type: ignore[arg-type]
    for x, raw in keys.items():
        pair = KeyPair.from_private_bytes(raw)  # type: ignore[arg-type]
        for v in SURVIVORS:
            jobs.append((d.masking_secret(pair, server._advert(v).masking_key, sid, x, v), v < x))
    assert server._sum is not None
    total = server._apply_masks(server._sum.copy(), jobs).astype(np.int64)
    for (v, j), seed in stripped.items():
        total -= noise.skellam(layout.excess[j], M, d.excess_noise_key(seed, sid, v, j))
    plain = sum((inputs[s].astype(np.int64) for s in SURVIVORS), np.zeros(M, dtype=np.int64))
    expected_noise = sum((added[s] for s in SURVIVORS), np.zeros(M, dtype=np.int64))
    for (v, j), seed in stripped.items():
        expected_noise -= noise.skellam(layout.excess[j], M, d.excess_noise_key(seed, sid, v, j))
    # the server holds the true sum of the 14 survivors plus exactly this noise
    assert np.array_equal(_centred(total - plain), _centred(expected_noise))
    left = len(SURVIVORS) * Fraction(layout.base) + sum(
        (Fraction(layout.excess[j]) for v in SURVIVORS for j in range(layout.components)
         if (v, j) not in stripped), Fraction(0))
    return left, set(stripped) - set(layout.removals(SURVIVORS))
