"""Adversarial review of the key-class cache (``agreement.key_class``
remembers the classes of the last 32,768 valid public keys): the cache is
keyed on the key's exact bytes and remembers only successes, so no invalid
key can be answered from it.  Checked by warming it with valid keys (and the
low-order, twist and non-canonical encodings that differ from them in one
bit) in every order, and against the uncached check; and at a real server, a
``bytes`` subclass whose ``__bytes__`` returns a valid, cached key while its
own bytes are a low-order point is refused before the cache is asked.
(These held on main: the test pins them.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl import Round, SecAggConfig
from securefl.errors import InvalidKeyError, RemoteProtocolError
from securefl.hazmat import agreement
from securefl.hazmat.agreement import KeyPair
from securefl.hazmat.randomness import default_random
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.messages import AdvertiseKeys
from tests.test_exclusion import LOW_ORDER

RNG = default_random(None)


def _uncached(raw: bytes) -> bytes | None:
    try:
        return agreement._probe(raw)
    except InvalidKeyError:
        return None


def _cached(raw: bytes) -> bytes | None:
    try:
        return agreement.key_class(raw)
    except InvalidKeyError:
        return None


def _neighbours(raw: bytes) -> list[bytes]:
    """``raw`` with its top bit set, ``u + p`` when that fits (a second
    encoding of the same point), and one low bit flipped."""
    u = int.from_bytes(raw, "little")
    out = [bytes(raw[:31]) + bytes([raw[31] | 0x80]),
           bytes([raw[0] ^ 1]) + bytes(raw[1:])]
    if u + agreement.FIELD_PRIME < 1 << 256:
        out.append((u + agreement.FIELD_PRIME).to_bytes(32, "little"))
    return out


@settings(max_examples=40, deadline=None)
@given(seeds=st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=6),
       order=st.randoms(use_true_random=False))
def test_the_cache_answers_exactly_as_the_uncached_check(seeds: list[bytes],
                                                         order: Any) -> None:
    valid = [KeyPair.from_private_bytes(s).public_bytes for s in seeds]
    probes = valid + [n for v in valid for n in _neighbours(v)] + LOW_ORDER + seeds
    order.shuffle(probes)
    for raw in probes + probes:  # the second pass is answered from the cache
        assert _cached(raw) == _uncached(raw)
        assert _cached(bytearray(raw)) == _uncached(raw)
    for point in LOW_ORDER:
        assert _cached(point) is None


class _Shapeshifter(bytes):
    """Its own bytes are one key; ``bytes(x)`` gives another."""

    other: bytes = b""

    def __bytes__(self) -> bytes:
        return self.other


def test_a_bytes_subclass_posing_as_a_cached_key_is_refused_at_the_server() -> None:
    config = SecAggConfig(num_clients=4, vector_length=4, bits=16, threshold=2)
    driver = SessionDriver(config, {c: np.zeros(4, dtype=np.uint64) for c in config.ids})
    adverts = driver.start(skip=[2])
    honest = adverts[1].masking_key
    agreement.key_class(honest)  # cached
    evil = _Shapeshifter(LOW_ORDER[2])
    evil.other = honest
    assert agreement.key_class(evil) == agreement.key_class(honest)  # the hazmat trusts __bytes__
    forged: AdvertiseKeys = dataclasses.replace(adverts[2], masking_key=evil)
    with pytest.raises(RemoteProtocolError) as info:
        driver.server.receive(forged)
    assert info.value.peer == 2 and info.value.round is Round.ADVERTISE_KEYS
