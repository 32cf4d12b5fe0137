"""The HKDF-SHA256 built on hashlib is RFC 5869 HKDF, byte for byte: it
agrees with ``cryptography``'s independent implementation on every input."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.errors import ConfigurationError
from securefl.hazmat.kdf import derive_key, hkdf_sha256, kdf_info


def _reference(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


@settings(max_examples=200, deadline=None)
@given(ikm=st.binary(max_size=100), salt=st.none() | st.binary(max_size=150),
       info=st.binary(max_size=300), length=st.integers(1, 255 * 32))
def test_hkdf_matches_cryptography(ikm: bytes, salt: bytes | None, info: bytes,
                                   length: int) -> None:
    assert hkdf_sha256(ikm, salt, info, length) == _reference(ikm, salt, info, length)


@settings(max_examples=100, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), label=st.binary(min_size=1, max_size=40),
       sid=st.binary(max_size=64), ids=st.lists(st.integers(0, 2**32 - 1), max_size=4))
def test_derive_key_matches_cryptography(secret: bytes, label: bytes, sid: bytes,
                                         ids: list[int]) -> None:
    info = kdf_info(b"securefl/secagg/" + label, 1, sid, ids)
    assert derive_key(secret, label, version=1, session_id=sid, client_ids=ids) == \
        _reference(secret, None, info, 32)


@pytest.mark.parametrize("length", [0, 255 * 32 + 1])
def test_hkdf_refuses_lengths_outside_rfc_5869(length: int) -> None:
    with pytest.raises(ConfigurationError):
        hkdf_sha256(b"k" * 32, None, b"", length)
