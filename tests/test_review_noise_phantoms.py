"""Adversarial review of the noise extension: on a sparse graph in active
mode, ONE corrupt client lets the server count honest clients whose masked
inputs it discards as survivors ("phantoms"), so the rule removes excess for
noise that is not in the sum.

SPEC.md [NZ-8] says a coalition of ``c`` clients "leaves at least
``V - c (B + sum_j w_j)``", and that naming a client that sent no masked
input on the signed list leaves "the survivors' pairwise masks with w never
removed".  On ``HararyGraph(k)`` a block of consecutive ring positions has
only ``k`` outside neighbours; with one of them corrupt (the server knows its
masking key, so it can cancel its masks with the block) and the other
``k - 1`` dropped (not signers: the quorum ``n - k + 1`` still signs), every
honest client in the block signs a list that names it a survivor, while the
server leaves the whole block's masked inputs out of the sum.  The masks
cancel, the sum unmasks, and its noise is that of the few clients left.

This is outside [SEC-1]'s conditions (``q >= n - kappa + 1 + c`` fails for
``c = 1`` with the default quorum), where SECURITY.md says secure aggregation
"promises nothing"; but the noise claim is stated without that condition.

REAL HOLE (documentation / stated bound), resolved as a KNOWN LIMIT: SPEC.md
[NZ-8] and SECURITY.md now state every noise bound only under [SEC-1]'s
conditions (``2t > holders + c``, ``2q > n + c``, ``q >= n - kappa + 1 + c``
for ``c`` corrupt clients) and say that outside them the plan promises
nothing.  ``test_known_limit_one_corrupt_client_makes_phantoms_outside_sec1``
performs the attack and checks it still succeeds exactly when a condition
fails; ``test_phantoms_are_refused_when_the_quorum_covers_the_corrupt_client``
shows the condition closes it.
"""

from __future__ import annotations

import hashlib
from fractions import Fraction

import numpy as np
import pytest

from securefl import SecAggConfig, SecurityMode
from securefl.errors import RemoteProtocolError, Rule
from securefl.hazmat import noise, shamir
from securefl.hazmat.agreement import KeyPair
from securefl.hazmat.prg import MaskExpander
from securefl.hazmat.randomness import DeterministicRandom
from securefl.protocol import derivation as d
from securefl.protocol.client import ClientSession
from securefl.protocol.harary import HararyGraph, ring_order
from securefl.protocol.messages import (
    ConsistencyRequest,
    MaskedInput,
    UnmaskingRequest,
    UnmaskingResponse,
)
from securefl.protocol.noise import NoisePlan
from tests.protocol_harness import Federation

N, K, T, M, BITS = 12, 4, 3, 16, 48
V = 1e6


def _centred(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.int64) & ((1 << BITS) - 1)
    return np.where(v >= 1 << (BITS - 1), v - (1 << BITS), v)


def test_known_limit_one_corrupt_client_makes_phantoms_outside_sec1() -> None:
    """KNOWN LIMIT: with ``c = 1`` corrupt client and the default quorum
    ``n - kappa + 1`` ([SEC-1]'s ``q >= n - kappa + 1 + c`` fails) the
    released noise falls below the coalition bound ``V - c (B + sum_j w_j)``;
    the documents promise nothing here."""
    config = SecAggConfig(N, M, bits=BITS, threshold=T, mode=SecurityMode.ACTIVE,
                          graph=HararyGraph(K), noise=NoisePlan(V, tolerance=1e-3))
    layout = config.noise_layout
    assert layout is not None
    assert config.signature_quorum == N - K + 1
    c, kappa, q = 1, config.graph.connectivity(N), config.signature_quorum
    assert not q >= N - kappa + 1 + c  # outside [SEC-1] for one corrupt client
    gen = np.random.default_rng(3)
    inputs = {c: gen.integers(0, 1000, M, dtype=np.uint64) for c in config.ids}
    added: dict[int, np.ndarray] = {}
    original = ClientSession._add_noise

    def spy(self: ClientSession, masked: np.ndarray) -> None:
        before = masked.astype(np.int64)
        original(self, masked)
        added[self.client_id] = masked.astype(np.int64) - before

    fed = Federation(config, inputs)
    fed.advertise()
    fed.step()  # R1: everyone shares keys
    server = fed.server
    sid = server.session_id
    assert sid is not None
    ring = ring_order(tuple(config.ids), sid)
    nbrs = {c: server._peers[c].neighbours for c in config.ids}
    # roles by ring position: corrupt m at 0, phantoms at 1..5, dropped at 6, 7 and 11
    corrupt = ring[0]
    phantoms = {ring[i] for i in range(1, 6)}
    dropped = {ring[6], ring[7], ring[11]}
    outside = set().union(*(nbrs[p] for p in phantoms)) - phantoms
    assert outside == dropped | {corrupt}  # the block's only outside neighbours
    corrupt_key: KeyPair = fed.clients[corrupt]._s  # the coalition knows its own key
    ClientSession._add_noise = spy  # type: ignore[method-assign]
    try:
        masked = fed.answer(skip=dropped)  # R2: the dropped send nothing
    finally:
        ClientSession._add_noise = original  # type: ignore[method-assign]
    fed.close()
    listed = tuple(sorted(set(config.ids) - dropped))
    assert len(listed) == config.signature_quorum
    for c, req in fed.pending.items():
        assert isinstance(req, ConsistencyRequest) and req.survivors == listed, c
    fed.step()  # every listed client signs, the phantoms included
    for c, req in fed.pending.items():
        assert isinstance(req, UnmaskingRequest) and req.survivors == listed, c
    responses = {c: r for c, r in fed.answer(send=False).items()
                 if isinstance(r, UnmaskingResponse)}
    assert set(responses) == set(listed)  # every honest client answered
    rng = DeterministicRandom(hashlib.sha256(b"phantoms").digest())

    def recover(field: str, secret: object) -> bytes:
        got = {h: getattr(r, field)[secret] for h, r in responses.items()
               if secret in getattr(r, field)}
        assert len(got) >= T, (field, secret, len(got))
        holders = sorted(got)[:T]
        return shamir.reconstruct(holders, [got[h] for h in holders], T, rng)

    # -- the server sums only the non-phantoms and cancels what is left ---------
    kept = [c for c in listed if c not in phantoms]
    total = np.zeros(M, dtype=np.uint64)
    for c in kept:
        msg = masked[c]
        assert isinstance(msg, MaskedInput)
        total += msg.masked.astype(np.uint64)
    jobs = [(d.self_mask_key(recover("self_mask_shares", c), sid, c), True) for c in kept]
    for z in dropped:
        pair = KeyPair.from_private_bytes(recover("key_shares", z))
        for v in kept:
            if v in nbrs[z]:
                jobs.append((d.masking_secret(pair, server._advert(v).masking_key, sid, z, v),
                             v < z))
    for p in phantoms & nbrs[corrupt]:  # the corrupt client's masks with the block
        jobs.append((d.masking_secret(corrupt_key, server._advert(p).masking_key, sid,
                                      corrupt, p), corrupt < p))
    total = MaskExpander(M, BITS).apply(jobs, total).astype(np.int64)
    removed = [(v, j) for v, j in layout.removals(listed) if v not in phantoms]
    for v, j in removed:
        seed = recover("noise_shares", (v, j))
        total -= noise.skellam(layout.excess[j], M, d.excess_noise_key(seed, sid, v, j))
    plain = sum((inputs[c].astype(np.int64) for c in kept), np.zeros(M, dtype=np.int64))
    noise_left = sum((added[c] for c in kept), np.zeros(M, dtype=np.int64))
    for v, j in removed:  # (regenerated the same way the server did)
        noise_left -= noise.skellam(layout.excess[j], M, d.excess_noise_key(
            recover("noise_shares", (v, j)), sid, v, j))
    # the server holds the exact sum of the non-phantoms' inputs plus this noise
    assert np.array_equal(_centred(total - plain), _centred(noise_left))
    honest_kept = [c for c in kept if c != corrupt]
    kept_pairs = {(v, j) for v in listed for j in range(layout.components)} - set(
        layout.removals(listed))
    variance = sum((Fraction(layout.base) + sum(
        (Fraction(layout.excess[j]) for j in range(layout.components) if (c, j) in kept_pairs),
        Fraction(0)) for c in honest_kept), Fraction(0))
    coalition_bound = Fraction(V) - 1 * (Fraction(layout.base) + sum(
        (Fraction(w) for w in layout.excess), Fraction(0)))
    # the bound [NZ-8] states for a coalition of c = 1 client *under [SEC-1]*
    # does not hold here: the attack succeeds, as documented
    assert variance < coalition_bound, (
        f"one corrupt client: {len(phantoms)} honest phantoms, noise from"
        f" {len(honest_kept)} honest clients only: variance {float(variance):.4g}"
        f" = {float(variance / Fraction(V)):.3f} V < {float(coalition_bound):.4g}")


def test_phantoms_are_refused_when_the_quorum_covers_the_corrupt_client() -> None:
    """Confirmed: with ``min_survivors = n - k + 2`` (so ``q >= n - kappa + 1 + c``
    for ``c = 1``, SECURITY.md's condition) the nine-client list of the attack
    above gets no signature: every listed client refuses it."""
    config = SecAggConfig(N, M, bits=BITS, threshold=T, mode=SecurityMode.ACTIVE,
                          min_survivors=N - K + 2, graph=HararyGraph(K),
                          noise=NoisePlan(V, tolerance=1e-3))
    assert config.signature_quorum == N - K + 2
    fed = Federation(config)
    fed.advertise()
    fed.step()
    sid = fed.server.session_id
    assert sid is not None
    ring = ring_order(tuple(config.ids), sid)
    dropped = {ring[6], ring[7], ring[11]}
    fed.answer(skip=dropped)
    listed = tuple(sorted(set(config.ids) - dropped))
    refusals = 0
    for c in listed:
        with pytest.raises(RemoteProtocolError) as info:
            fed.clients[c].handle(ConsistencyRequest(c, sid, listed))
        assert info.value.rule is Rule.BELOW_THRESHOLD
        refusals += 1
    assert refusals == len(listed) == N - 3
