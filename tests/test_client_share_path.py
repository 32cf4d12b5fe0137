"""The client's batched share path (R1 share encryption, R2 share decryption
and pairwise mask keys) against the per-pair functions it replaced: the same
bytes, key for key and ciphertext for ciphertext, and the same refusals."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl import wire
from securefl.errors import DecryptionError, InconsistentSharesError
from securefl.hazmat import shamir
from securefl.hazmat.kdf import PairDerivation, derive_key
from securefl.hazmat.prg import MaskExpander
from securefl.hazmat.randomness import DeterministicRandom
from securefl.protocol import SecAggConfig
from securefl.protocol import derivation as d
from securefl.protocol.client import ClientSession, _entries_at, _field_elements
from securefl.protocol.harary import HararyGraph
from securefl.protocol.messages import AdvertiseKeys, KeyRoster
from securefl.protocol.roster import RosterEntries
from securefl.protocol.server import ServerSession

ids32 = st.integers(0, 2**32 - 1)


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), label=st.binary(min_size=1, max_size=40),
       version=st.integers(0, 2**32 - 1), sid=st.binary(min_size=0, max_size=64), a=ids32,
       b=ids32)
def test_pair_derivation_is_derive_key(secret: bytes, label: bytes, version: int, sid: bytes,
                                       a: int, b: int) -> None:
    assert PairDerivation(label, version=version, session_id=sid).key(secret, a, b) == \
        derive_key(secret, label, version=version, session_id=sid, client_ids=(a, b))


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), sid=st.binary(min_size=32, max_size=32),
       me=st.integers(1, 2**31 - 2), peer=st.integers(1, 2**31 - 2),
       components=st.integers(0, 3), data=st.data())
def test_peer_derivations_are_the_per_pair_functions(secret: bytes, sid: bytes, me: int,
                                                     peer: int, components: int,
                                                     data: st.DataObject) -> None:
    pairs = d.PeerDerivations(sid, me)
    assert pairs.share_key(secret, peer) == d.share_encryption_key(secret, sid, me, peer)
    assert pairs.mask_key(secret, peer) == d.pairwise_mask_key(secret, sid, me, peer)
    shares = [data.draw(st.binary(min_size=64, max_size=64)) for _ in range(2 + components)]
    key = pairs.share_key(secret, peer)
    # what ``peer`` sends to ``me`` opens to the bundle decrypt_share_bundle cuts up
    ciphertext = d.encrypt_shares(key, sid, peer, me, shares[0], shares[1], shares[2:])
    plain = pairs.open(key, peer, ciphertext)
    assert plain == b"".join(shares)
    assert (plain[:64], plain[64:128], tuple(plain[128 + 64 * j:192 + 64 * j]
                                             for j in range(components))) == \
        d.decrypt_share_bundle(key, sid, peer, me, ciphertext)
    # the same refusals: a flipped bit, or the wrong direction
    flipped = bytearray(ciphertext)
    flipped[data.draw(st.integers(0, len(ciphertext) - 1))] ^= 1
    for bad_sender, bad_ct in ((peer, bytes(flipped)), (me, ciphertext) if me != peer
                               else (peer, bytes(flipped))):
        with pytest.raises(DecryptionError):
            pairs.open(key, bad_sender, bad_ct)
        with pytest.raises(DecryptionError):
            d.decrypt_share_bundle(key, sid, bad_sender, me, bad_ct)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 80))
def test_entries_at_is_find(seed: int, count: int) -> None:
    rng = random.Random(seed)
    senders = sorted(rng.sample(range(1, 5000), count))
    fields = np.frombuffer(rng.randbytes(96 * count), dtype=np.uint8).reshape(count, 96)
    columns = RosterEntries(np.array(senders, dtype=np.uint32), fields.copy())
    wanted = sorted(set(rng.sample(senders, rng.randint(0, count))
                        + rng.sample(range(1, 6000), 5)))
    expected = {u: e for u in wanted if (e := columns.find(u)) is not None}
    assert _entries_at(columns, wanted) == expected
    assert all(isinstance(e, AdvertiseKeys) for e in expected.values())


@settings(max_examples=40, deadline=None)
@given(words=st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=64).map(
    lambda w: w[:len(w) // 16 * 16]))
def test_field_elements_is_check_shares(words: list[int]) -> None:
    plain = np.array(words, dtype="<u4").tobytes()
    try:
        shamir.check_shares([plain[i:i + 64] for i in range(0, len(plain), 64)])
        valid = True
    except InconsistentSharesError:
        valid = False
    assert _field_elements(plain) is valid


class _Recorder:
    """A randomness source that keeps every byte it hands out."""

    def __init__(self, seed: bytes) -> None:
        self._inner = DeterministicRandom(seed)
        self.drawn = bytearray()

    def token_bytes(self, n: int) -> bytes:
        out = self._inner.token_bytes(n)
        self.drawn += out
        return out


class _Replay:
    def __init__(self, data: bytes) -> None:
        self._data, self._pos = bytes(data), 0

    def token_bytes(self, n: int) -> bytes:
        out = self._data[self._pos:self._pos + n]
        self._pos += n
        assert len(out) == n
        return out


@settings(max_examples=6, deadline=None)
@given(n=st.sampled_from([5, 9, 70]), seed=st.binary(min_size=32, max_size=32),
       harary=st.booleans())
def test_a_round_is_byte_for_byte_the_per_pair_path(n: int, seed: bytes, harary: bool) -> None:
    """Every client's share ciphertexts (R1) and masked input (R2), through
    the wire codec, equal what the per-pair functions the client called
    before make from the same randomness (Shamir split replayed)."""
    kwargs = {"graph": HararyGraph(4), "threshold": 3} if harary else {}
    config = SecAggConfig(num_clients=n, vector_length=37, bits=20, **kwargs)
    server = ServerSession(config)
    rngs = {c: _Recorder(bytes([c % 256]) + seed[1:]) for c in config.ids}
    clients = {c: ClientSession(config, c, rng=rngs[c]) for c in config.ids}
    for c in config.ids:
        server.receive(wire.decode(wire.encode(clients[c].start())))
    roster = None
    replies = {}
    for e in server.close_round():
        roster = wire.decode(wire.encode(e.message))
        assert isinstance(roster, KeyRoster)
        client = clients[e.recipient]
        before = len(rngs[e.recipient].drawn)
        secrets = [client._s.private_bytes(), client._seed]
        private_c = client._c
        replies[e.recipient] = reply = client.handle(roster)
        sid = client.session_id
        assert sid is not None
        holders = sorted(client._neighbours | {e.recipient})
        shares = shamir.split(secrets, holders, config.t,
                              _Replay(rngs[e.recipient].drawn[before:]))
        for row, holder in enumerate(holders):
            if holder == e.recipient:
                continue
            entry = next(x for x in roster.entries if x.sender == holder)
            key = d.share_encryption_key(private_c.exchange(entry.encryption_key), sid,
                                         e.recipient, holder)
            assert reply.ciphertexts[holder] == d.encrypt_shares(
                key, sid, e.recipient, holder, shamir.share_to_bytes(shares[row, 0]),
                shamir.share_to_bytes(shares[row, 1]))
        server.receive(wire.decode(wire.encode(reply)))
    gen = np.random.default_rng(list(seed))
    inputs = {c: gen.integers(0, 2**20, 37, dtype=np.uint32) for c in config.ids}
    for e in server.close_round():
        delivery = wire.decode(wire.encode(e.message))
        client = clients[e.recipient]
        private_s, self_seed = client._s, client._seed
        client.provide_input(inputs[e.recipient])
        masked = client.handle(delivery)
        sid = client.session_id
        assert sid is not None
        jobs = [(d.self_mask_key(self_seed, sid, e.recipient), False)]
        jobs += [(d.masking_secret(private_s, client._roster[u].masking_key, sid,
                                   e.recipient, u), e.recipient > u)
                 for u in sorted(delivery.ciphertexts)]
        expected = inputs[e.recipient].copy()
        MaskExpander(37, 20).apply(jobs, expected)
        assert np.array_equal(masked.masked, expected) and masked.excluded == ()
        server.receive(wire.decode(wire.encode(masked)))


def test_pair_derivation_refuses_ids_kdf_info_refuses() -> None:
    pairs = PairDerivation(b"x", version=1, session_id=os.urandom(32))
    for bad in (-1, 2**32):
        with pytest.raises(Exception) as new:
            pairs.key(bytes(32), 1, bad)
        with pytest.raises(Exception) as old:
            derive_key(bytes(32), b"x", version=1, session_id=bytes(32), client_ids=(1, bad))
        assert type(new.value) is type(old.value)
