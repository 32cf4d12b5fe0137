"""Distributed Skellam noise through real sessions (SPEC.md section 11).

The plumbing is exact (zero-variance plans give the exact sum; with noise, the
released noise is exactly the survivors' noise minus the rule's removals); the
released variance matches its reported value over many rounds with 30% of
the clients dropped after sharing keys; a malicious server cannot make honest
clients reveal more excess seeds than the rule selects; a client that adds no
noise lowers the variance by exactly its share.

Statistical tests draw every party's randomness from ``DeterministicRandom``
(for the test only), so they are deterministic.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl import Round, SecAggConfig, SecurityMode
from securefl.errors import RemoteProtocolError, Rule
from securefl.hazmat import noise
from securefl.hazmat.randomness import DeterministicRandom
from securefl.protocol import ClientState
from securefl.protocol import derivation as d
from securefl.protocol.client import ClientSession
from securefl.protocol.inmemory import SessionDriver, secure_sum
from securefl.protocol.messages import AdvertiseKeys, UnmaskingRequest, UnmaskingResponse
from securefl.protocol.noise import NoisePlan
from securefl.protocol.server import ServerSession
from securefl.wire import decode, encode
from tests.protocol_harness import Federation


def _rng(label: str) -> DeterministicRandom:
    return DeterministicRandom(hashlib.sha256(label.encode()).digest())


def _inputs(config: SecAggConfig, seed: int = 0, high: int = 1000) -> dict[int, np.ndarray]:
    gen = np.random.default_rng(seed)
    return {c: gen.integers(0, high, config.vector_length, dtype=np.uint64) for c in config.ids}


def _centred(values: np.ndarray, bits: int) -> np.ndarray:
    """Ring elements as signed integers in [-2^(bits-1), 2^(bits-1))."""
    v = values.astype(np.int64) & ((1 << bits) - 1)
    return np.where(v >= 1 << (bits - 1), v - (1 << bits), v)


def _released_noise(config: SecAggConfig, inputs: dict[int, np.ndarray],
                    result: object) -> np.ndarray:
    total = sum((inputs[c].astype(np.int64) for c in result.survivors),  # type: ignore[attr-defined]
                np.zeros(config.vector_length, dtype=np.int64))
    return _centred(result.total.astype(np.int64) - total, config.bits)  # type: ignore[attr-defined]


@contextmanager
def _spy_noise() -> Iterator[dict[int, np.ndarray]]:
    """Record the noise every client adds (the masked vector before and after)."""
    added: dict[int, np.ndarray] = {}
    original = ClientSession._add_noise

    def spy(self: ClientSession, masked: np.ndarray) -> None:
        before = masked.astype(np.int64)
        original(self, masked)
        added[self.client_id] = masked.astype(np.int64) - before

    ClientSession._add_noise = spy  # type: ignore[method-assign]
    try:
        yield added
    finally:
        ClientSession._add_noise = original  # type: ignore[method-assign]


# -- exactness of the plumbing ------------------------------------------------


@pytest.mark.parametrize("mode", [SecurityMode.SEMI_HONEST, SecurityMode.ACTIVE])
def test_zero_variance_plan_gives_the_exact_sum_with_dropouts(mode: SecurityMode) -> None:
    config = SecAggConfig(10, 64, bits=24, mode=mode, noise=NoisePlan(0.0))
    assert config.noise_components >= 2  # the excess seeds are shared and removed for real
    inputs = _inputs(config, high=1 << 20)
    dropouts = {1: Round.SHARE_KEYS, 2: Round.MASKED_INPUT_COLLECTION, 9: Round.UNMASKING}
    res = secure_sum(inputs, config, dropouts)
    expected = sum(inputs[c] for c in res.survivors) % (1 << 24)
    assert np.array_equal(res.total, expected)
    assert res.noise_variance == 0.0
    layout = config.noise_layout
    assert layout is not None
    assert res.noise_removed == layout.removals(res.survivors) and res.noise_removed


@pytest.mark.parametrize(("mode", "plan"), [
    (SecurityMode.ACTIVE, NoisePlan(400.0)),
    (SecurityMode.SEMI_HONEST, NoisePlan.calibrate_to_threshold(400.0))])
def test_released_noise_is_exactly_survivors_noise_minus_the_removed_excess(
        mode: SecurityMode, plan: NoisePlan) -> None:
    """(Removable plans run in active mode only, [NZ-1b]; in semi-honest mode
    the threshold plan, which removes nothing.)"""
    config = SecAggConfig(8, 256, bits=32, mode=mode, noise=plan)
    layout = config.noise_layout
    assert layout is not None
    inputs = _inputs(config, 1)
    with _spy_noise() as added:
        driver = SessionDriver(config, inputs, dropouts={3: Round.MASKED_INPUT_COLLECTION,
                                                         7: Round.UNMASKING})
        driver.start()
        seeds = {c: list(s._noise_seeds) for c, s in driver.clients.items()}
        driver.close()
        while not driver.finished:
            driver.step()
    res = driver.result
    assert 3 not in res.survivors and 7 in res.survivors
    # after its masked input no client keeps its excess seeds (only holders' shares)
    assert not any(hasattr(s, "_noise_seeds") for s in driver.clients.values()
                   if s.state is not ClientState.SHARES_SENT)
    sid = driver.server.session_id
    assert sid is not None
    expected = sum((added[c] for c in res.survivors), np.zeros(256, dtype=np.int64))
    for v, j in res.noise_removed:
        expected -= noise.skellam(layout.excess[j], 256,
                                  d.excess_noise_key(seeds[v][j], sid, v, j))
    assert np.array_equal(_released_noise(config, inputs, res), _centred(expected, 32))
    assert res.noise_variance == layout.released_variance(len(res.survivors))
    # every client added base + all its excess: removals never touch a dropped client
    assert all(v in res.survivors for v, _ in res.noise_removed)


# -- the released variance, over many rounds -----------------------------------


def _empirical_variance(plan: NoisePlan, rounds: int, label: str,
                        lazy: int | None = None) -> tuple[float, set[float], int]:
    """Pooled variance of the released noise over ``rounds`` sessions of 10
    clients, 3 (30%) dropped after sharing keys, a different 3 each round."""
    config = SecAggConfig(10, 2000, bits=32, threshold=6, mode=SecurityMode.ACTIVE, noise=plan)
    rng = _rng(label)
    pick = np.random.default_rng(int.from_bytes(rng.token_bytes(4), "big"))
    samples, reported = [], set()
    for r in range(rounds):
        dropped = pick.choice([c for c in config.ids if c != lazy], 3, replace=False)
        inputs = _inputs(config, r)
        driver = SessionDriver(config, inputs,
                               dropouts={int(c): Round.MASKED_INPUT_COLLECTION for c in dropped},
                               rng=_rng(f"{label}/{r}"))
        if lazy is not None:
            driver.clients[lazy]._add_noise = lambda masked: None  # type: ignore[method-assign]
        driver.run()
        res = driver.result
        assert len(res.survivors) == 7
        samples.append(_released_noise(config, inputs, res))
        reported.add(res.noise_variance)  # type: ignore[arg-type]
    pooled = np.concatenate(samples)
    assert abs(pooled.mean()) < 5 * np.sqrt(max(reported) / len(pooled))
    return float(pooled.var()), reported, len(pooled)


def test_released_variance_matches_the_target_with_30_percent_dropped() -> None:
    target = 900.0
    var, reported, count = _empirical_variance(NoisePlan(target), 25, "removable")
    (released,) = reported
    # the rule's promise: V <= released <= V (1 + bound)
    layout = NoisePlan(target).layout(10, 6)
    assert target <= released <= target * (1 + float(layout.excess_bound)) * (1 + 1e-12)
    # the noise actually present has that variance (5 standard errors: sqrt(2/N))
    assert abs(var / released - 1) < 5 * np.sqrt(2 / count)


def test_calibrate_to_threshold_releases_more_than_the_target_beside_it() -> None:
    target = 900.0
    var, reported, count = _empirical_variance(NoisePlan.calibrate_to_threshold(target), 25,
                                               "threshold")
    (released,) = reported
    assert released == pytest.approx(7 * target / 6)  # u V / f: 16.7% more noise than V
    assert abs(var / released - 1) < 5 * np.sqrt(2 / count)


def test_a_client_that_adds_no_noise_lowers_the_variance_by_exactly_its_share() -> None:
    """The documented limit (SPEC [NZ-8]): a survivor that adds no noise takes
    its base and its kept excess out of the released noise, and the server,
    which subtracts its removed components anyway, puts those back in as
    independent noise: the variance drops by exactly B + kept - removed, at
    most B + sum_j w_j.  Nobody can detect it."""
    plan = NoisePlan(900.0)
    layout = plan.layout(10, 6)
    lazy = 1  # the smallest id: first in every sorted survivor list
    # exactly: the released noise is the others' noise minus every removal
    config = SecAggConfig(10, 64, bits=32, threshold=6, mode=SecurityMode.ACTIVE, noise=plan)
    inputs = _inputs(config, 5)
    with _spy_noise() as added:
        driver = SessionDriver(config, inputs, dropouts={c: Round.MASKED_INPUT_COLLECTION
                                                         for c in (4, 7, 9)})
        driver.clients[lazy]._add_noise = lambda masked: None  # type: ignore[method-assign]
        driver.start()
        seeds = {c: list(s._noise_seeds) for c, s in driver.clients.items()}
        driver.close()
        while not driver.finished:
            driver.step()
    res = driver.result
    assert lazy in res.survivors and lazy not in added
    sid = driver.server.session_id
    assert sid is not None
    expected = sum((added[c] for c in res.survivors if c != lazy), np.zeros(64, dtype=np.int64))
    for v, j in res.noise_removed:
        expected -= noise.skellam(layout.excess[j], 64, d.excess_noise_key(seeds[v][j], sid, v, j))
    assert np.array_equal(_released_noise(config, inputs, res), _centred(expected, 32))
    # statistically, over 25 rounds with 30% dropped: the variance the formula says
    var, reported, count = _empirical_variance(plan, 25, "lazy", lazy=lazy)
    (released,) = reported
    survivors = list(range(1, 8))  # any 7 ids containing 1 sort it first: same pairs
    removed = layout.removals(survivors)
    kept_by_lazy = sum(w for j, w in enumerate(layout.excess) if (lazy, j) not in removed)
    removed_of_lazy = sum(w for j, w in enumerate(layout.excess) if (lazy, j) in removed)
    drop = layout.base + kept_by_lazy - removed_of_lazy
    assert 0 < drop <= layout.base + sum(layout.excess)
    assert abs(var / (released - drop) - 1) < 5 * np.sqrt(2 / count)
    assert var < released * (1 - 3 * np.sqrt(2 / count))  # really below what is reported


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(4, 7), data=st.data())
def test_any_accepted_dropout_pattern_releases_at_least_the_target(
        n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(n // 2 + 1, n - 1))  # active mode: 2t > n holders
    config = SecAggConfig(n, 4, bits=32, threshold=t, mode=SecurityMode.ACTIVE,
                          noise=NoisePlan(1e4))
    layout = config.noise_layout
    assert layout is not None
    stages = [Round.SHARE_KEYS, Round.MASKED_INPUT_COLLECTION, Round.UNMASKING]
    droppers = data.draw(st.lists(st.sampled_from(config.ids),
                                  max_size=n - config.signature_quorum, unique=True))
    dropouts = {c: data.draw(st.sampled_from(stages)) for c in droppers}
    res = secure_sum(_inputs(config), config, dropouts)
    u = len(res.survivors)
    assert res.noise_variance == layout.released_variance(u)
    assert 1e4 <= layout.released_variance_exact(u) <= 1e4 * (1 + layout.excess_bound) * (
        1 + 1e-12)
    assert res.noise_removed == layout.removals(res.survivors)


# -- a malicious server ---------------------------------------------------------


def _at_unmasking(config: SecAggConfig, drop: set[int]) -> Federation:
    fed = Federation(config)
    fed.advertise()
    fed.step()
    fed.step(skip=drop)
    if config.mode is SecurityMode.ACTIVE:
        fed.step()
    return fed


NOISY = SecAggConfig(num_clients=6, vector_length=8, bits=32, threshold=4,
                     mode=SecurityMode.ACTIVE, noise=NoisePlan(100.0, tolerance=1e-2))


def _refused(fed: Federation, client: int, message: UnmaskingRequest) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        fed.clients[client].handle(message)
    err = info.value
    assert err.rule is Rule.NOISE_REMOVAL_NOT_SELECTED and err.round is Round.UNMASKING
    assert err.peer == "server" and Rule.NOISE_REMOVAL_NOT_SELECTED.value in str(err)
    assert fed.clients[client].state is ClientState.ABORTED
    return err


@pytest.mark.parametrize("threshold", [4, 5])
def test_asking_for_more_excess_seeds_than_the_rule_selects_is_refused(
        threshold: int) -> None:
    config = SecAggConfig(num_clients=6, vector_length=8, bits=32, mode=SecurityMode.ACTIVE,
                          threshold=threshold, noise=NoisePlan(100.0, tolerance=1e-2))
    fed = _at_unmasking(config, drop={6})
    req = fed.pending[1]
    assert isinstance(req, UnmaskingRequest)
    layout = config.noise_layout
    assert layout is not None
    kept = sorted({(v, j) for v in req.survivors for j in range(layout.components)}
                  - set(req.noise_removals))
    assert kept, "the rule keeps some excess with a dropout"
    # the attack: also ask for a kept seed, to strip the noise below the target
    greedy = dataclasses.replace(req, noise_removals=tuple(sorted({*req.noise_removals,
                                                                   kept[0]})))
    err = _refused(fed, 1, greedy)
    assert str(kept[0]) in str(err)
    # every other client refuses it too: the server gets no share of anything
    for c in fed.pending:
        if c != 1:
            _refused(fed, c, dataclasses.replace(fed.pending[c],
                                                 noise_removals=greedy.noise_removals))


def test_asking_for_a_dropped_clients_excess_seed_is_refused() -> None:
    fed = _at_unmasking(NOISY, drop={6})
    req = fed.pending[1]
    assert 6 in req.dropped
    err = _refused(fed, 1, dataclasses.replace(
        req, noise_removals=tuple(sorted({*req.noise_removals, (6, 0)}))))
    assert "[6]" in str(err)  # named as a client not listed as a survivor
    # asking for fewer (keeping more noise than the rule) is refused as well: the
    # rule is public and every honest client applies the same one
    fed2 = _at_unmasking(NOISY, drop={6})
    _refused(fed2, 2, dataclasses.replace(fed2.pending[2],
                                          noise_removals=fed2.pending[2].noise_removals[1:]))


def test_honest_clients_reveal_only_the_selected_seeds_so_no_more_can_be_removed() -> None:
    fed = _at_unmasking(NOISY, drop={6})
    req = fed.pending[1]
    responses = fed.answer()
    revealed = set()
    for c, resp in responses.items():
        assert isinstance(resp, UnmaskingResponse)
        assert set(resp.noise_shares) <= set(req.noise_removals), c
        revealed |= set(resp.noise_shares)
        assert all(v in req.survivors for v, _ in resp.noise_shares)
    # not one share of a kept or dropped client's seed left any client: the
    # server cannot reconstruct those seeds, whatever it does next
    assert revealed == set(req.noise_removals)
    fed.close()
    assert fed.result.noise_removed == req.noise_removals
    # and a second request for more, after answering, is refused
    greedy = dataclasses.replace(req, noise_removals=())
    with pytest.raises(RemoteProtocolError) as info:
        fed.clients[1].handle(greedy)
    assert info.value.rule is Rule.SECOND_UNMASK_REQUEST


@pytest.mark.parametrize("liars", [(1, 2, 3), (1, 2)])
def test_a_split_survivor_list_is_refused_in_active_mode(liars: tuple[int, ...]) -> None:
    """Active mode (removable plans need it, [NZ-1b]), t = 4 of 6: client 6
    shared keys, then dropped.  The server tells ``liars`` that 6 survived (a
    longer list: the rule removes more excess) and the others the truth.  The
    longer list carries no quorum of signatures, so every liar refuses it and
    reveals nothing: no share of an extra seed, nor of 6's key, leaves them.
    (In semi-honest mode the same split, three-way, strips kept excess:
    tests/test_review_noise_split.py.)"""
    fed = _at_unmasking(NOISY, drop={6})
    truth = fed.pending[1]
    layout = NOISY.noise_layout
    assert layout is not None
    claimed = (1, 2, 3, 4, 5, 6)
    extra = set(layout.removals(claimed)) - set(truth.noise_removals) - {
        (6, j) for j in range(layout.components)}
    assert extra, "the longer list selects more of the real survivors' excess"
    revealed: set[tuple[int, int]] = set()
    for c in (1, 2, 3, 4, 5):
        req = fed.pending[c]
        if c in liars:
            req = dataclasses.replace(req, survivors=claimed, dropped=(),
                                      noise_removals=layout.removals(claimed))
            with pytest.raises(RemoteProtocolError):
                fed.clients[c].handle(req)
            assert fed.clients[c].state is ClientState.ABORTED
            continue
        resp = fed.clients[c].handle(req)
        assert isinstance(resp, UnmaskingResponse)
        revealed |= set(resp.noise_shares)
    assert not revealed & extra


# -- the server refuses malformed noise material --------------------------------


def test_the_server_refuses_wrong_noise_commitments_and_responses() -> None:
    # (semi-honest, unsigned adverts: a zero-variance plan, which has J seeds all the same)
    zero = SecAggConfig(num_clients=6, vector_length=8, bits=32, threshold=3,
                        noise=NoisePlan(0.0, tolerance=1e-2))
    assert zero.noise_components > 0
    server = ServerSession(zero)
    client = ClientSession(zero, 1, input=np.zeros(8, dtype=np.uint32))
    advert = client.start()
    assert len(advert.noise_commitments) == zero.noise_components
    for bad in (advert.noise_commitments[:-1], (*advert.noise_commitments[:-1], b"x" * 31)):
        with pytest.raises(RemoteProtocolError) as info:
            server.receive(AdvertiseKeys(1, advert.encryption_key, advert.masking_key, None,
                                         advert.seed_commitment, bad))
        assert info.value.rule is Rule.MALFORMED and "noise-seed commitments" in str(info.value)
    server.receive(advert)
    # a response with a noise share nobody asked for is refused
    fed = _at_unmasking(NOISY, drop={6})
    replies = fed.answer(send=False)
    resp = replies[2]
    extra = dict(resp.noise_shares)
    extra[(6, 0)] = next(iter(resp.noise_shares.values()))
    with pytest.raises(RemoteProtocolError) as info:
        fed.server.receive(dataclasses.replace(resp, noise_shares=extra))
    assert info.value.rule is Rule.MALFORMED


def test_a_forged_noise_seed_share_is_blamed_and_the_noise_still_removed_exactly() -> None:
    config = SecAggConfig(7, 32, bits=32, threshold=4, mode=SecurityMode.ACTIVE,
                          noise=NoisePlan(100.0))
    inputs = _inputs(config, 3)
    with _spy_noise() as added:
        fed = Federation(config, inputs)
        fed.start()
        seeds = {c: list(s._noise_seeds) for c, s in fed.clients.items()}
        fed.close()
        fed.step()
        fed.step(skip={7})
        fed.step()  # the consistency round
        replies = fed.answer(send=False)
    (v, j) = fed.pending[1].noise_removals[0]
    forged = dict(replies[2].noise_shares)
    share = bytearray(forged[(v, j)])
    share[0] ^= 1
    forged[(v, j)] = bytes(share)
    replies[2] = dataclasses.replace(replies[2], noise_shares=forged)
    fed.send(replies)
    fed.close()
    res = fed.result
    assert any(b.peer == 2 and b.rule is Rule.FORGED_SHARE and "excess-noise seed" in b.detail
               for b in res.blame)
    layout = config.noise_layout
    assert layout is not None and fed.server.session_id is not None
    expected = sum((added[c] for c in res.survivors), np.zeros(32, dtype=np.int64))
    for u, k in res.noise_removed:
        expected -= noise.skellam(layout.excess[k], 32,
                                  d.excess_noise_key(seeds[u][k], fed.server.session_id, u, k))
    assert np.array_equal(_released_noise(config, inputs, res), _centred(expected, 32))


# -- wire -----------------------------------------------------------------------


def test_noise_fields_round_trip_on_the_wire_and_are_canonical() -> None:
    fed = _at_unmasking(NOISY, drop={6})
    req = fed.pending[1]
    assert decode(encode(req), config=NOISY) == req
    resp = fed.clients[1].handle(req)
    back = decode(encode(resp), config=NOISY)
    assert isinstance(back, UnmaskingResponse)
    assert dict(back.noise_shares) == dict(resp.noise_shares) and back.noise_shares
    # out of (owner, component) order is a second encoding: refused
    from securefl.wire import secagg_pb2 as pb
    from securefl.wire.codec import WireIssue
    env = pb.SecAggMessage.FromString(encode(req))
    refs = list(env.unmasking_request.noise_removals)
    assert len(refs) >= 2
    del env.unmasking_request.noise_removals[:]
    for ref in reversed(refs):
        env.unmasking_request.noise_removals.add(owner=ref.owner, component=ref.component)
    with pytest.raises(RemoteProtocolError) as info:
        decode(env.SerializeToString(deterministic=True), config=NOISY)
    assert info.value.reason == WireIssue.NON_CANONICAL.value  # type: ignore[attr-defined]



def test_a_share_bundle_with_the_wrong_number_of_noise_shares_is_excluded_like_garbage() -> None:
    """SPEC [NZ-3]: a ciphertext that authenticates but carries another number of
    noise-seed shares (the server checks lengths, so only a sender colluding
    with a server that skips that check can deliver one) makes the recipient
    exclude the sender, as [R2-5]."""
    fed = Federation(NOISY)
    fed.advertise()
    recipient, sender = 1, 2
    fed.step()
    key = fed.clients[sender]._share_keys[recipient]
    sid = fed.clients[sender].session_id
    assert sid is not None
    wrong = d.encrypt_shares(key, sid, sender, recipient, b"\0" * 64, b"\0" * 64,
                             [b"\0" * 64] * (NOISY.noise_components + 1))
    delivery = fed.pending[recipient]
    cts = dict(delivery.ciphertexts)
    cts[sender] = wrong
    masked = fed.answer(send=False,
                        replace={recipient: dataclasses.replace(delivery, ciphertexts=cts)})
    assert masked[recipient].excluded == (sender,)
    assert all(masked[c].excluded == () for c in masked if c != recipient)


def test_clients_refuse_a_roster_whose_noise_commitments_do_not_fit_the_plan() -> None:
    fed = Federation(NOISY)
    roster = fed.advertise()[1]
    entries = list(roster.entries)
    entries[2] = dataclasses.replace(entries[2],
                                     noise_commitments=entries[2].noise_commitments[:-1])
    bad = dataclasses.replace(roster, entries=tuple(entries))
    with pytest.raises(RemoteProtocolError) as info:
        fed.clients[1].handle(bad)
    assert info.value.rule is Rule.MALFORMED and info.value.peer == entries[2].sender
    assert fed.clients[1].state is ClientState.ABORTED


def test_the_server_removes_the_same_noise_with_an_executor() -> None:
    from concurrent.futures import ThreadPoolExecutor

    config = SecAggConfig(8, 300, bits=32, mode=SecurityMode.ACTIVE, noise=NoisePlan(100.0))
    inputs = _inputs(config, 4)
    drop = {2: Round.MASKED_INPUT_COLLECTION}
    alone = secure_sum(inputs, config, drop, rng=_rng("executor"))
    with ThreadPoolExecutor(2) as pool:
        pooled = secure_sum(inputs, config, drop, rng=_rng("executor"), executor=pool)
    assert len(alone.noise_removed) > 2
    assert np.array_equal(alone.total, pooled.total)


def test_the_wire_checks_noise_field_sizes() -> None:
    from securefl.wire import secagg_pb2 as pb
    from securefl.wire.codec import WireIssue

    fed = Federation(NOISY)
    fed.advertise()
    shares = fed.answer(send=False)[1]
    data = encode(shares)
    size = d.shares_ciphertext_bytes(NOISY.noise_components)
    assert all(len(ct) == size for ct in decode(data).ciphertexts.values())  # type: ignore[union-attr]
    assert decode(data, config=NOISY) == shares
    # with the configuration the length is exact: a plan-less session refuses it
    with pytest.raises(RemoteProtocolError) as info:
        decode(data, config=SecAggConfig(6, 8, threshold=3))
    assert info.value.reason == WireIssue.OVERSIZED_FIELD.value  # type: ignore[attr-defined]
    # too many commitments, or a component beyond the limit, never decode
    advert = pb.SecAggMessage.FromString(encode(fed.sent[Round.ADVERTISE_KEYS][1]))
    advert.advertise_keys.noise_commitments.extend([b"\0" * 32] * 17)
    with pytest.raises(RemoteProtocolError) as info:
        decode(advert.SerializeToString(deterministic=True))
    assert info.value.reason == WireIssue.OVERSIZED_FIELD.value  # type: ignore[attr-defined]
    req = _at_unmasking(NOISY, drop={6}).pending[1]
    env = pb.SecAggMessage.FromString(encode(req))
    env.unmasking_request.noise_removals.add(owner=6, component=16)
    with pytest.raises(RemoteProtocolError) as info:
        decode(env.SerializeToString(deterministic=True))
    assert info.value.reason == WireIssue.INVALID_ID.value  # type: ignore[attr-defined]


# -- the noisy prefix ([NZ-1] L, [NZ-4]) ------------------------------------------


def test_noise_touches_only_the_noisy_prefix_and_removal_is_exact_there() -> None:
    """With ``noisy_length = L`` clients noise coordinates ``0..L-1`` only and
    the server removes the selected excess from the same coordinates: the
    rest of the sum is exact (the codec's weight slot), with dropouts."""
    from securefl.conformance.jsonio import config_from_json, config_to_json

    config = SecAggConfig(8, 12, bits=32, mode=SecurityMode.ACTIVE,
                          noise=NoisePlan(1e4, noisy_length=9))
    assert config.noise_length == 9
    assert config_from_json(config_to_json(config)) == config
    inputs = _inputs(config, 6)
    with _spy_noise() as added:
        res = secure_sum(inputs, config, {2: Round.MASKED_INPUT_COLLECTION,
                                          5: Round.MASKED_INPUT_COLLECTION},
                         rng=_rng("prefix"))
    assert res.noise_removed and len(res.survivors) == 6
    released = _released_noise(config, inputs, res)
    assert np.array_equal(released[9:], np.zeros(3, dtype=np.int64))
    assert all(not added[c][9:].any() for c in added)
    assert np.count_nonzero(released[:9]) >= 8  # sigma 100 (deterministic randomness)
