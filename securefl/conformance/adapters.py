"""The adapter interface between the conformance runner and an
implementation under test, and securefl's own adapters (the default target).

Adapters speak v1 wire bytes (``SecAggMessage``, SPEC.md section 9) so that
any implementation, in any language, can be wrapped, for instance by a
Python adapter that talks to a subprocess.

A *client factory* is a callable ``factory(spec: ClientSpec) ->
ClientUnderTest``; a *server factory* is ``factory(spec: ServerSpec) ->
ServerUnderTest``.  Load one from the command line with
``--client module:factory`` / ``--server module:factory``.

Refusals are reported by raising :class:`securefl.errors.ProtocolError`
(any subclass) whose ``rule`` is the :class:`securefl.errors.Rule` broken;
a wrapper around a foreign implementation maps its error to
``Rule(<stable rule id string>)`` (the rule ids are listed in SPEC.md
section 12).  A server that cannot continue raises
:class:`securefl.errors.AbortError` from :meth:`ServerUnderTest.close_round`.

A factory may set the attribute ``fixed_randomness = True`` to declare that
its sessions draw every random byte from ``spec.random_seed`` exactly as
SPEC.md section 14.2 describes (AES-256-CTR keystream, fixed draw order);
only then are client transcripts compared byte for byte, and the client
under test of a scenario is given its seed too, so that its refusals are
also searched for its own private keys and self-mask seed (without it they
are searched only for its agreements with the runner's peers).  Server
outputs never depend on randomness and are always compared.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefl.errors import ConfigurationError, LocalProtocolError, Rule, WireFormatError
from securefl.hazmat import aead, shamir
from securefl.hazmat.kdf import LABEL_PREFIX, derive_key
from securefl.hazmat.prg import MaskExpander
from securefl.hazmat.randomness import DeterministicRandom
from securefl.protocol.client import ClientSession
from securefl.protocol.config import SecAggConfig
from securefl.protocol.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    ShareDelivery,
    SparseKeyRoster,
    UnmaskingRequest,
    UnmaskingResponse,
)
from securefl.protocol.server import ServerSession
from securefl.wire import decode, encode

SERVER_MESSAGES = (KeyRoster, SparseKeyRoster, ShareDelivery, ConsistencyRequest,
                   UnmaskingRequest)
CLIENT_MESSAGES = (AdvertiseKeys, EncryptedShares, MaskedInput, ConsistencySignature,
                   UnmaskingResponse)


@dataclass(frozen=True)
class ClientSpec:
    """Everything a client under test is given.

    Attributes:
        config: the session configuration (SPEC.md section 3).
        client_id: this client's id.
        input: the vector to aggregate (``vector_length`` ints below 2^bits).
        identity_private_key: active mode: the raw 32-byte Ed25519 private key.
        peer_identities: active mode: every client's raw 32-byte Ed25519
            public key, by id.
        random_seed: 32 bytes of fixed fake randomness (SPEC.md 14.2), or
            None for the implementation's own CSPRNG.
    """

    config: SecAggConfig
    client_id: int
    input: tuple[int, ...]
    identity_private_key: bytes | None = None
    peer_identities: Mapping[int, bytes] = field(default_factory=dict)
    random_seed: bytes | None = None


@dataclass(frozen=True)
class ServerSpec:
    """Everything a server under test is given (see :class:`ClientSpec`)."""

    config: SecAggConfig
    peer_identities: Mapping[int, bytes] = field(default_factory=dict)
    random_seed: bytes | None = None


@dataclass(frozen=True)
class RoundResult:
    """What a finished server reports: the sum mod 2^bits, whose inputs it
    contains, and the clients it blamed (SPEC [R2-6], [R4-11]), ascending;
    with a noise plan, the released noise variance and the removed
    ``(survivor, component)`` excess seeds (SPEC [NZ-6])."""

    total: tuple[int, ...]
    survivors: tuple[int, ...]
    blamed: tuple[int, ...] = ()
    noise_variance: float | None = None
    noise_removed: tuple[tuple[int, int], ...] = ()


@runtime_checkable
class ClientUnderTest(Protocol):
    """One client session of the implementation under test."""

    def start(self) -> bytes:
        """R0: return the encoded AdvertiseKeys."""
        ...

    def handle(self, data: bytes) -> bytes:
        """Feed one encoded server message; return the encoded reply.
        Raise ``ProtocolError`` (with ``rule``) to refuse it."""
        ...


@runtime_checkable
class ServerUnderTest(Protocol):
    """One server session of the implementation under test."""

    def receive(self, data: bytes) -> None:
        """Feed one encoded client message.  Raise ``ProtocolError`` (with
        ``rule``) to refuse it, leaving the session's state unchanged."""
        ...

    def close_round(self) -> list[tuple[int, bytes]]:
        """The round's deadline passed: return ``(recipient, encoded
        message)`` pairs for the next round (empty after the last round).
        Raise ``AbortError`` when fewer than threshold clients remain, and
        ``AbortError`` with ``rule = Rule.COMMITMENT_MISMATCH`` when the
        revealed shares cannot be decoded to committed secrets (SPEC [R4-11]),
        ``Rule.COMPLAINT_CONTRADICTED`` when a complaint's sender revealed a
        share of the client it reported ([R4-12]), and
        ``Rule.COMPLAINTS_LEFT_TOO_FEW`` when complaint resolution leaves
        fewer than needed ([R2-6])."""
        ...

    def result(self) -> RoundResult:
        """The result of a finished session."""
        ...

    def statuses(self) -> dict[int, str]:
        """Every invited client's status (SPEC.md section 11 vocabulary)."""
        ...


ClientFactory = Callable[[ClientSpec], ClientUnderTest]
ServerFactory = Callable[[ServerSpec], ServerUnderTest]


class Primitives(Protocol):
    """Optional: the primitives of the implementation under test, for the
    primitive vectors (SPEC.md sections 3.5 to 7).  Every method raises any
    exception to reject its input."""

    def kdf(self, secret: bytes, label: bytes, version: int, session_id: bytes,
            client_ids: list[int]) -> bytes:
        """The 32-byte derived key (label without the ``securefl/secagg/`` prefix)."""
        ...

    def prg(self, key: bytes, bits: int, length: int) -> list[int]:
        """The mask: ``length`` elements of Z_{2^bits}."""
        ...

    def shamir_reconstruct(self, holders: list[int], shares: list[bytes],
                           threshold: int) -> bytes:
        """The 32-byte secret; reject inconsistent or malformed shares."""
        ...

    def shamir_evaluate(self, secret: bytes, coefficients: list[int], holders: list[int],
                        threshold: int) -> list[bytes]:
        """Every holder's 64-byte share, given the polynomial coefficients:
        ``coefficients[j*16 + l]`` is the coefficient of x^(j+1) for limb l
        (SPEC.md 6.2)."""
        ...

    def aead_open(self, key: bytes, nonce: bytes, ciphertext: bytes,
                  associated_data: bytes) -> bytes:
        """Decrypt and authenticate; reject on failure."""
        ...

    def graph_neighbours(self, graph: str, roster: list[int],
                         session_id: bytes) -> dict[int, list[int]]:
        """Every roster member's neighbours, ascending (SPEC.md 3.5)."""
        ...

    # Optional (sparse roster delivery, SPEC.md 10.1a; the cases are skipped
    # without them): ``roster_leaf(sender, encryption_key, masking_key,
    # seed_commitment, noise_commitments) -> bytes``, the Merkle leaf hash of
    # an entry, and ``roster_inclusion(leaf, index, tree_size, path, root) ->
    # bool``, RFC 9162 inclusion proof verification.


# -- securefl's own adapters -----------------------------------------------


class SecureFLClient:
    """securefl's :class:`ClientSession` behind the byte interface."""

    def __init__(self, spec: ClientSpec) -> None:
        identity = (Ed25519PrivateKey.from_private_bytes(spec.identity_private_key)
                    if spec.identity_private_key is not None else None)
        pinned = dict(spec.peer_identities) or None
        rng = DeterministicRandom(spec.random_seed) if spec.random_seed is not None else None
        self.session = ClientSession(
            spec.config, spec.client_id, input=np.asarray(spec.input, dtype=np.uint64),
            identity_key=identity, peer_identities=pinned, rng=rng)
        self._element_bytes = spec.config.wire_element_bytes
        self._config = spec.config
        self._broken = False

    def start(self) -> bytes:
        """R0."""
        return encode(self.session.start())

    def handle(self, data: bytes) -> bytes:
        """Decode strictly (with the configuration, which bounds every id
        list by the session size), then let the session answer.  Undecodable
        bytes abort this client for good, like any other server violation."""
        if self._broken:
            raise LocalProtocolError(Rule.SESSION_FINISHED, "this session was aborted")
        try:
            message = decode(data, config=self._config, expect=SERVER_MESSAGES)
        except WireFormatError as exc:
            self._broken = True
            exc.peer = "server"
            raise
        return encode(self.session.handle(message), element_bytes=self._element_bytes)


class SecureFLServer:
    """securefl's :class:`ServerSession` behind the byte interface."""

    def __init__(self, spec: ServerSpec) -> None:
        rng = DeterministicRandom(spec.random_seed) if spec.random_seed is not None else None
        self.session = ServerSession(spec.config, peer_identities=dict(spec.peer_identities)
                                     or None, rng=rng)
        self.config = spec.config

    def receive(self, data: bytes) -> None:
        """Decode strictly (with the configuration), then receive."""
        self.session.receive(decode(data, config=self.config, expect=CLIENT_MESSAGES))

    def close_round(self) -> list[tuple[int, bytes]]:
        """Close the round and encode what goes out."""
        return [(e.recipient, encode(e.message)) for e in self.session.close_round()]

    def result(self) -> RoundResult:
        """The finished session's result."""
        res = self.session.result
        return RoundResult(tuple(int(x) for x in res.total), tuple(res.survivors),
                           tuple(sorted({b.peer for b in res.blame})), res.noise_variance,
                           tuple(res.noise_removed))

    def statuses(self) -> dict[int, str]:
        """Every client's :class:`~securefl.protocol.config.ClientStatus` value."""
        return {c: s.value for c, s in self.session.statuses.items()}


def securefl_client(spec: ClientSpec) -> ClientUnderTest:
    """The default client factory."""
    return SecureFLClient(spec)


def securefl_server(spec: ServerSpec) -> ServerUnderTest:
    """The default server factory."""
    return SecureFLServer(spec)


securefl_client.fixed_randomness = True  # type: ignore[attr-defined]
securefl_server.fixed_randomness = True  # type: ignore[attr-defined]


class SecureFLPrimitives:
    """securefl's hazmat layer behind :class:`Primitives`."""

    def kdf(self, secret: bytes, label: bytes, version: int, session_id: bytes,
            client_ids: list[int]) -> bytes:
        """HKDF-SHA256 with the v1 info layout."""
        return derive_key(secret, label, version=version, session_id=session_id,
                          client_ids=client_ids)

    def prg(self, key: bytes, bits: int, length: int) -> list[int]:
        """AES-256-CTR mapped to Z_{2^bits}."""
        return [int(x) for x in MaskExpander(length, bits).expand(key)]

    def shamir_reconstruct(self, holders: list[int], shares: list[bytes],
                           threshold: int) -> bytes:
        """Reconstruct, checking every extra share."""
        return shamir.reconstruct(holders, shares, threshold, DeterministicRandom(bytes(32)))

    def shamir_evaluate(self, secret: bytes, coefficients: list[int], holders: list[int],
                        threshold: int) -> list[bytes]:
        """Evaluate the given polynomials by feeding the coefficients as the
        sharing randomness."""
        raw = np.asarray(coefficients, dtype="<u4").tobytes()
        shares = shamir.split([secret], holders, threshold, _Replay(raw))
        return [shamir.share_to_bytes(shares[i, 0]) for i in range(len(holders))]

    def aead_open(self, key: bytes, nonce: bytes, ciphertext: bytes,
                  associated_data: bytes) -> bytes:
        """AES-256-GCM open."""
        return aead.decrypt(key, nonce, ciphertext, associated_data)

    def graph_neighbours(self, graph: str, roster: list[int],
                         session_id: bytes) -> dict[int, list[int]]:
        """The neighbour map of the named graph."""
        from securefl.conformance.jsonio import graph_from_text

        mapping = graph_from_text(graph).neighbours(tuple(roster), session_id)
        return {c: sorted(v) for c, v in mapping.items()}

    def roster_leaf(self, sender: int, encryption_key: bytes, masking_key: bytes,
                    seed_commitment: bytes, noise_commitments: list[bytes]) -> bytes:
        """The Merkle leaf hash of a roster entry (SPEC.md [MRK-2])."""
        from securefl.protocol.merkle import leaf_hash

        return leaf_hash(AdvertiseKeys(sender, encryption_key, masking_key, None,
                                       seed_commitment, tuple(noise_commitments)))

    def roster_inclusion(self, leaf: bytes, index: int, tree_size: int, path: list[bytes],
                         root: bytes) -> bool:
        """Does the RFC 9162 inclusion proof verify (SPEC.md [MRK-6])?"""
        from securefl.protocol.merkle import verify_inclusion

        return verify_inclusion(leaf, index, tree_size, path, root)


class _Replay:
    """A RandomSource that hands out fixed bytes, then refuses."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def token_bytes(self, n: int) -> bytes:
        if n > len(self._data):
            raise ConfigurationError("replayed randomness exhausted")
        out, self._data = self._data[:n], self._data[n:]
        return out


def securefl_primitives() -> Primitives:
    """The default primitives factory."""
    return SecureFLPrimitives()


KDF_LABEL_PREFIX = LABEL_PREFIX


def load_factory(spec: str) -> Callable[..., object]:
    """Import ``module:attribute`` (e.g. ``mypkg.secagg:make_client``).

    Raises:
        ConfigurationError: malformed spec, missing module or attribute, or
            an attribute that is not callable.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"adapter must be given as module:factory, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import adapter module {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigurationError(f"{spec!r} is not a callable factory")
    return factory
