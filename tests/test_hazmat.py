"""Properties of the primitives: Shamir, the mask PRG, AEAD binding, keys."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.errors import (
    ConfigurationError,
    DecryptionError,
    InconsistentSharesError,
    InvalidKeyError,
    SecureFLError,
    SignatureError,
)
from securefl.hazmat import aead, shamir, signing
from securefl.hazmat.agreement import KeyPair
from securefl.hazmat.kdf import derive_key
from securefl.hazmat.prg import MaskExpander, ring_dtype
from securefl.hazmat.randomness import DeterministicRandom, SystemRandom

RNG = SystemRandom()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60),
    data=st.data(),
    secrets=st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=4),
)
def test_shamir_any_t_shares_reconstruct_exactly(n: int, data: st.DataObject,
                                                 secrets: list[bytes]) -> None:
    t = data.draw(st.integers(1, n))
    holders = data.draw(st.lists(st.integers(1, 2**31 - 2), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secrets, holders, t, RNG)
    assert shares.shape == (n, len(secrets), shamir.LIMBS)
    k = data.draw(st.integers(t, n))
    subset = data.draw(st.permutations(range(n)))[:k]
    got = shamir.Reconstructor([holders[i] for i in subset], t).reconstruct(shares[subset], RNG)
    assert got == secrets


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 30), data=st.data())
def test_shamir_detects_a_corrupted_share_when_more_than_t(n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n - 1))
    holders = list(range(1, n + 1))
    secrets = [os.urandom(32), os.urandom(32)]
    shares = shamir.split(secrets, holders, t, RNG)
    victim = data.draw(st.integers(0, n - 1))
    limb = data.draw(st.integers(0, shamir.LIMBS - 1))
    which = data.draw(st.integers(0, 1))
    delta = data.draw(st.integers(1, shamir.PRIME - 1))
    shares[victim, which, limb] = (int(shares[victim, which, limb]) + delta) % shamir.PRIME
    with pytest.raises(InconsistentSharesError):
        shamir.Reconstructor(holders, t).reconstruct(shares, RNG)


def test_shamir_fewer_than_t_shares_is_refused_and_t_minus_1_reveal_nothing_structural() -> None:
    shares = shamir.split([bytes(32)], [1, 2, 3, 4], 3, RNG)
    with pytest.raises(ConfigurationError):
        shamir.Reconstructor([1, 2], 3)
    # two shares of the all-zero secret look like uniform field elements, not zeros
    assert np.count_nonzero(shares[:2]) > 20


def test_shamir_two_secrets_to_1000_parties_is_fast_enough_to_be_vectorised() -> None:
    # not a timing assertion: a sanity check that the vectorised path is used
    shares = shamir.split([os.urandom(32), os.urandom(32)], range(1, 1001), 501, RNG)
    assert shares.shape == (1000, 2, 16) and shares.dtype == np.uint32
    assert int(shares.max()) < shamir.PRIME


def test_shamir_share_serialisation_round_trip_and_rejects_garbage() -> None:
    share = shamir.split([os.urandom(32)], [7], 1, RNG)[0, 0]
    raw = shamir.share_to_bytes(share)
    assert len(raw) == shamir.SHARE_BYTES
    assert np.array_equal(shamir.share_from_bytes(raw), share)
    with pytest.raises(InconsistentSharesError):
        shamir.share_from_bytes(raw[:-1])
    with pytest.raises(InconsistentSharesError):
        shamir.share_from_bytes(b"\xff" * 64)


@pytest.mark.parametrize("points", [[0, 1], [1, 1], [1, 2**31 - 1]])
def test_shamir_rejects_bad_evaluation_points(points: list[int]) -> None:
    with pytest.raises(ConfigurationError):
        shamir.split([bytes(32)], points, 1, RNG)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 64), length=st.integers(1, 3000),
       chunk=st.sampled_from([16, 64, 1000, 1 << 17]))
def test_prg_maps_the_aes_ctr_keystream_to_the_ring(bits: int, length: int, chunk: int) -> None:
    key = os.urandom(32)
    width = ring_dtype(bits).itemsize
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(
        bytes(length * width))
    expected = np.frombuffer(stream, dtype=ring_dtype(bits)).astype(np.uint64)
    if bits < 64:
        expected &= np.uint64((1 << bits) - 1)
    expander = MaskExpander(length, bits, chunk_bytes=chunk)
    assert np.array_equal(expander.expand(key).astype(np.uint64), expected)
    acc = expander.zeros()
    expander.add_into(key, acc)
    expander.add_into(key, acc)
    expander.subtract_into(key, acc)
    assert np.array_equal(expander.reduce(acc).astype(np.uint64), expected)


def test_prg_refuses_bad_keys_and_accumulators() -> None:
    expander = MaskExpander(10, 32)
    with pytest.raises(ConfigurationError):
        expander.expand(b"short")
    with pytest.raises(ConfigurationError):
        expander.add_into(os.urandom(32), np.zeros(10, dtype=np.uint64))
    with pytest.raises(ConfigurationError):
        MaskExpander(10, 65)


def test_aead_binds_associated_data_and_detects_tampering() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    ct = aead.encrypt(key, nonce, b"secret share", b"session|1|2")
    assert aead.decrypt(key, nonce, ct, b"session|1|2") == b"secret share"
    for bad_ad in (b"session|2|1", b"other|1|2", b""):
        with pytest.raises(DecryptionError):
            aead.decrypt(key, nonce, ct, bad_ad)
    flipped = bytes([ct[0] ^ 1]) + ct[1:]
    with pytest.raises(DecryptionError):
        aead.decrypt(key, nonce, flipped, b"session|1|2")


def test_kdf_is_domain_separated_by_every_input() -> None:
    base = dict(version=1, session_id=b"s" * 32, client_ids=(1, 2))
    k = derive_key(b"x" * 32, b"pairwise-mask", **base)
    variants = [
        derive_key(b"x" * 32, b"self-mask", **base),
        derive_key(b"x" * 32, b"pairwise-mask", **{**base, "version": 2}),
        derive_key(b"x" * 32, b"pairwise-mask", **{**base, "session_id": b"t" * 32}),
        derive_key(b"x" * 32, b"pairwise-mask", **{**base, "client_ids": (1, 3)}),
        derive_key(b"x" * 32, b"pairwise-mask", **{**base, "client_ids": (12,)}),
        derive_key(b"y" * 32, b"pairwise-mask", **base),
    ]
    assert len({k, *variants}) == len(variants) + 1
    assert len(k) == 32


def test_x25519_refuses_low_order_points_and_bad_lengths() -> None:
    pair = KeyPair.generate(RNG)
    with pytest.raises(InvalidKeyError):
        pair.exchange(bytes(32))  # the zero point: all-zero shared secret
    with pytest.raises(InvalidKeyError):
        pair.exchange(b"\x01" * 31)
    assert "private=<hidden>" in repr(pair)
    assert pair.private_bytes().hex() not in repr(pair)


def test_signatures_reject_forgeries() -> None:
    key = signing.generate_identity(RNG)
    sig = signing.sign(key, b"msg")
    signing.verify(key.public_key(), sig, b"msg")
    with pytest.raises(SignatureError):
        signing.verify(key.public_key(), sig, b"msg2")
    with pytest.raises(SignatureError):
        signing.verify(key.public_key(), sig[:-1], b"msg")
    other = signing.generate_identity(RNG)
    with pytest.raises(SignatureError):
        signing.verify(other.public_key(), sig, b"msg")


def test_deterministic_randomness_is_reproducible_and_hides_its_seed() -> None:
    seed = os.urandom(32)
    a, b = DeterministicRandom(seed), DeterministicRandom(seed)
    assert a.token_bytes(40) == b.token_bytes(40)
    assert a.token_bytes(8) != DeterministicRandom(os.urandom(32)).token_bytes(8)
    assert seed.hex() not in repr(a)
    with pytest.raises(SecureFLError):
        DeterministicRandom(b"short")


@settings(max_examples=25, deadline=None)
@given(bits=st.sampled_from([5, 8, 16, 31, 32, 64]), length=st.integers(1, 20_000),
       workers=st.integers(2, 5), keys=st.sampled_from([1, 2, 4, 9, 24]))
def test_parallel_segments_give_the_same_masks_as_one_pass(bits: int, length: int, workers: int,
                                                           keys: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(os.urandom(32), bool(i % 2)) for i in range(keys)]
    start = np.arange(length, dtype=ring_dtype(bits))
    one = MaskExpander(length, bits, chunk_bytes=256).apply(jobs, start.copy())
    with ThreadPoolExecutor(workers) as pool:
        many = MaskExpander(length, bits, chunk_bytes=256).apply(
            jobs, start.copy(), executor=pool, workers=workers)
    assert np.array_equal(one, many)
    reference = start.astype(np.uint64)
    for key, negate in jobs:
        mask = MaskExpander(length, bits).expand(key).astype(np.uint64)
        reference = reference - mask if negate else reference + mask
    if bits < 64:
        reference &= np.uint64((1 << bits) - 1)
    assert np.array_equal(one.astype(np.uint64), reference)


@pytest.mark.parametrize("table", [0, shamir.TABLE_POINTS])
def test_shamir_table_and_fermat_lagrange_paths_agree(monkeypatch: pytest.MonkeyPatch,
                                                      table: int) -> None:
    monkeypatch.setattr(shamir, "TABLE_POINTS", table)
    holders = list(range(3, 303, 2))
    secrets = [os.urandom(32) for _ in range(3)]
    shares = shamir.split(secrets, holders, 100, RNG)
    order = list(range(len(holders)))[::-1]
    rec = shamir.Reconstructor([holders[i] for i in order], 100)
    assert rec.reconstruct(shares[order], RNG) == secrets
    shares[order[120], 1, 5] = (int(shares[order[120], 1, 5]) + 1) % shamir.PRIME
    with pytest.raises(InconsistentSharesError):
        rec.reconstruct(shares[order], RNG)


@settings(max_examples=25, deadline=None)
@given(holders=st.integers(1, 12), secrets=st.integers(1, 4), data=st.data())
def test_shares_to_bytes_is_share_to_bytes_of_every_share_in_order(
        holders: int, secrets: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, holders))
    seed = data.draw(st.binary(min_size=32, max_size=32))
    shares = shamir.split([os.urandom(32) for _ in range(secrets)], list(range(1, holders + 1)),
                          t, DeterministicRandom(seed))
    blob = shamir.shares_to_bytes(shares)
    expected = b"".join(shamir.share_to_bytes(shares[h, s])
                        for h in range(holders) for s in range(secrets))
    assert blob == expected
    width = shamir.SHARE_BYTES
    for h in range(holders):
        for s in range(secrets):
            i = h * secrets + s
            assert shamir.share_from_bytes(blob[i * width:(i + 1) * width]).tolist() == \
                shares[h, s].tolist()


@settings(max_examples=200, deadline=None)
@given(a=st.integers(-(2**300), 2**300),
       n=st.one_of(st.just(2**255 - 19), st.integers(0, 2**40).map(lambda x: 2 * x + 1)))
def test_jacobi_symbol_agrees_with_euler_criterion_and_its_definition(a: int, n: int) -> None:
    from securefl.hazmat.agreement import jacobi

    got = jacobi(a, n)
    if n == 1:
        assert got == 1
        return
    if n == 2**255 - 19:  # a prime: the Legendre symbol is Euler's criterion
        euler = pow(a, (n - 1) // 2, n)
        assert got == {0: 0, 1: 1, n - 1: -1}[euler]
    # multiplicative in the top argument, and 0 exactly when gcd(a, n) > 1
    b = a * a + 3
    assert jacobi(a * b, n) == got * jacobi(b, n)
    assert (got == 0) == (math.gcd(a, n) > 1)


def test_jacobi_symbol_small_moduli_brute_force_and_refuses_even_moduli() -> None:
    from securefl.hazmat.agreement import jacobi

    for p in (3, 5, 7, 11, 13, 101, 257):  # primes: 1 iff a non-zero square
        squares = {x * x % p for x in range(1, p)}
        for a in range(-p, 2 * p):
            expected = 0 if a % p == 0 else (1 if a % p in squares else -1)
            assert jacobi(a, p) == expected
    assert jacobi(2, 15) == jacobi(2, 3) * jacobi(2, 5)
    for bad in (0, -3, 2, 10):
        with pytest.raises(ValueError):
            jacobi(1, bad)


def test_canonical_public_accepts_curve_points_and_refuses_twist_points() -> None:
    from securefl.hazmat import agreement

    p = agreement.FIELD_PRIME
    for _ in range(50):
        pub = KeyPair.generate(SystemRandom()).public_bytes
        assert agreement.is_canonical_public(pub)
    on_twist = 0
    for u in range(1, 200):
        rhs = (u ** 3 + 486662 * u * u + u) % p
        expected = pow(rhs, (p - 1) // 2, p) == 1
        assert agreement.is_canonical_public(u.to_bytes(32, "little")) == expected
        on_twist += not expected
    assert 50 < on_twist < 150  # about half the u-coordinates lie on the twist
