"""The primitives we wrap, checked against their published test vectors."""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefl.hazmat import aead, signing
from securefl.hazmat.agreement import KeyPair
from securefl.hazmat.kdf import hkdf_sha256
from securefl.hazmat.prg import MaskExpander

h = bytes.fromhex


def test_x25519_rfc7748_section_6_1() -> None:
    alice = KeyPair.from_private_bytes(
        h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob = KeyPair.from_private_bytes(
        h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
    assert alice.public_bytes == h(
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert bob.public_bytes == h(
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert alice.exchange(bob.public_bytes) == shared
    assert bob.exchange(alice.public_bytes) == shared


def test_hkdf_rfc5869_case_1() -> None:
    okm = hkdf_sha256(b"\x0b" * 22, h("000102030405060708090a0b0c"), h("f0f1f2f3f4f5f6f7f8f9"), 42)
    assert okm == h("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                    "34007208d5b887185865")


def test_hkdf_rfc5869_case_3_empty_salt_and_info() -> None:
    okm = hkdf_sha256(b"\x0b" * 22, None, b"", 42)
    assert okm == h("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
                    "9d201395faa4b61a96c8")


def test_aes256_gcm_mcgrew_viega_cases_13_and_14() -> None:
    key, nonce = bytes(32), bytes(12)
    assert aead.encrypt(key, nonce, b"", b"") == h("530f8afbc74536b9a963b4f1c4cb738b")
    assert aead.encrypt(key, nonce, bytes(16), b"") == h(
        "cea7403d4d606b6e074ec5d3baf39d18" "d0d1c8a799996bf0265b98b5d48ab919")
    assert aead.decrypt(key, nonce, h("cea7403d4d606b6e074ec5d3baf39d18"
                                      "d0d1c8a799996bf0265b98b5d48ab919"), b"") == bytes(16)


def test_ed25519_rfc8032_test_1() -> None:
    key = Ed25519PrivateKey.from_private_bytes(
        h("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"))
    assert signing.public_bytes(key) == h(
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    sig = signing.sign(key, b"")
    assert sig == h("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
                    "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
    signing.verify(key.public_key(), sig, b"")


def test_prg_is_aes256_ctr_keystream_with_zero_counter_block() -> None:
    # FIPS-197-style known answer: AES-256 with an all-zero key encrypting the
    # all-zero block is dc95c078a2408989ad48a21492842087; the PRG's first
    # keystream block under key 0^32 and counter block 0^128 is exactly that.
    first_block = h("dc95c078a2408989ad48a21492842087")
    words = MaskExpander(4, 32).expand(bytes(32))
    assert words.tolist() == np.frombuffer(first_block, dtype="<u4").tolist()
    bytes_ = MaskExpander(16, 8).expand(bytes(32))
    assert bytes(bytes_.astype(np.uint8)) == first_block
