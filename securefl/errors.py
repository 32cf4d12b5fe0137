"""Every exception securefl raises derives from :class:`SecureFLError`.

The protocol errors follow h11's split: a :class:`LocalProtocolError` means
*you* (the caller of a session object) used it wrongly; a
:class:`RemoteProtocolError` means the *peer* broke the protocol.  Every
protocol violation names the peer, the round and the rule broken, and never
carries key material, shares or plaintext.
"""

from __future__ import annotations

import enum
import traceback
from typing import Any


class SecureFLError(Exception):
    """Root of every exception raised by securefl."""


def clear_traceback_locals(exc: BaseException, *, keep: BaseException | None = None) -> None:
    """Drop the local variables of every finished frame in the traceback of
    ``exc`` and of every exception it chains to (``__cause__``,
    ``__context__``, the members of an exception group), stopping at ``keep``
    (the caller's exception that was already being handled, which is left
    alone).

    A session's frames hold secrets while it works (a client's own Shamir
    shares of its keys, pairwise agreements and derived keys, peers'
    decrypted shares, mask keys); an exception keeps its frames, and so those
    locals, alive after the session wiped its state, and any reporter that
    records locals (``traceback.TracebackException(capture_locals=True)``,
    error trackers, ``loguru``'s ``diagnose``) would write them out.  The
    traceback keeps its file names, line numbers and code; the frame still
    executing (the caller's) cannot be cleared and is skipped.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or current is keep or id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)
        stack += [current.__cause__, current.__context__]
        # an exception group (Python 3.11+) chains to its members too
        members = getattr(current, "exceptions", ())
        if isinstance(members, tuple):
            stack += [m for m in members if isinstance(m, BaseException)]


class ConfigurationError(SecureFLError, ValueError):
    """A configuration value is out of range or inconsistent.  Raised up front,
    before any key is generated or any message is sent."""


class MissingExtraError(SecureFLError, ModuleNotFoundError):
    """A securefl module needs an optional dependency that is not installed.

    ``pip install securefl`` installs only the secure aggregation core; the
    message names the extra that brings the rest (``pip install
    'securefl[train]'`` for torch, Opacus, scikit-learn, matplotlib, tqdm and
    dp-accounting).  ``name`` is the missing top-level module, as for any
    :class:`ModuleNotFoundError`.
    """


class Rule(str, enum.Enum):
    """The protocol rules a peer (or the caller) can break.

    The value is a stable, human-readable identifier that also appears in the
    protocol specification and the conformance reports.
    """

    WRONG_ROUND = "message-not-expected-in-this-round"
    UNKNOWN_PEER = "sender-not-in-roster"
    DUPLICATE_MESSAGE = "duplicate-message-from-peer"
    WRONG_SESSION = "session-id-mismatch"
    WRONG_CONFIG = "configuration-digest-mismatch"
    MALFORMED = "malformed-message"
    INVALID_PUBLIC_KEY = "invalid-public-key"
    DUPLICATE_KEY = "duplicate-advertised-key"
    OWN_KEY_ALTERED = "own-advertised-keys-altered"
    BELOW_THRESHOLD = "fewer-than-threshold-peers"
    WRONG_RECIPIENTS = "shares-not-addressed-to-exactly-the-neighbours"
    DECRYPTION_FAILED = "share-ciphertext-failed-authentication"
    WRONG_LENGTH = "vector-length-mismatch"
    VALUE_OUT_OF_RANGE = "value-out-of-ring"
    OVERLAPPING_LISTS = "survivor-and-dropped-lists-overlap"
    LISTS_CONTRADICT_VIEW = "lists-contradict-what-the-client-saw"
    BOTH_SHARES_REQUESTED = "both-shares-of-one-peer-requested"
    OWN_SHARE_REQUESTED = "own-key-share-requested"
    SECOND_UNMASK_REQUEST = "second-unmasking-request"
    MISSING_SIGNATURE = "signature-missing"
    INVALID_SIGNATURE = "signature-invalid"
    NOT_ENOUGH_SIGNATURES = "fewer-than-threshold-consistency-signatures"
    INCONSISTENT_SHARES = "shares-inconsistent"
    SESSION_FINISHED = "session-already-finished-or-aborted"
    MISSING_INPUT = "no-input-provided"
    UNSUPPORTED_VERSION = "unsupported-protocol-version"
    FORGED_SHARE = "share-inconsistent-with-commitment"
    """A holder's revealed share is not on the polynomial whose secret matches
    the owner's commitment (the holder forged it, or the owner dealt it so);
    the share is left out and the holder is blamed (SPEC [R4-11])."""
    COMMITMENT_MISMATCH = "reconstruction-fails-commitment"
    """No consistent set of the revealed shares reconstructs a secret that
    matches its owner's commitment (always so when exactly t shares were
    revealed and one is wrong): the round aborts, nobody is named."""
    SHARES_REFUSED = "shares-refused-by-recipient"
    """A recipient reported that a peer's share ciphertext did not decrypt or
    held malformed shares; both ends of every complaint of a maximal
    matching of the complaint graph are excluded before unmasking
    (SPEC [R2-6])."""
    NOISE_REMOVAL_NOT_SELECTED = "noise-removal-not-selected-by-rule"
    """With a noise plan: the unmasking request asks for excess-noise seed
    shares other than exactly those the public selection rule picks for its
    survivor list (more excess, another component, or a client not listed as
    a survivor); the client reveals nothing (SPEC [NZ-5])."""
    COMPLAINT_CONTRADICTED = "complaint-contradicted-by-its-sender"
    """A client revealed, in its unmasking response, a share of a peer that
    its masked input reported as excluded: it masked with that peer, so the
    complaint was forged in transit (or the client lied); the round aborts,
    since the sum would be wrong (SPEC [R4-12])."""
    ROSTER_ID_SET_INVALID = "roster-id-set-invalid"
    """With ``roster_delivery="merkle"``: the roster's id bitmap is not one
    bit per invited id (``ceil(n/8)`` bytes) or sets a bit past them, so it
    names no set of invited clients (SPEC [MRK-4])."""
    ROSTER_NOT_NEIGHBOURS = "roster-entries-not-exactly-the-neighbours"
    """With ``roster_delivery="merkle"``: the sparse roster does not carry
    exactly the recipient's own entry and its neighbours' (on the graph the
    id set and the session id fix): an entry is missing or one of another
    client was added; the peer named is that client (SPEC [MRK-5])."""
    ROSTER_PROOF_INVALID = "roster-inclusion-proof-invalid"
    """With ``roster_delivery="merkle"``: an entry's inclusion proof does not
    verify (RFC 9162 section 2.1.3.2) at its sender's leaf index against the
    roster root the session id binds: the entry is not the one committed
    (altered, substituted, or the proof of another leaf; SPEC [MRK-6])."""
    COMPLAINTS_LEFT_TOO_FEW = "too-few-left-after-complaint-resolution"
    """Enough masked inputs arrived, but resolving the share complaints (both
    ends of every matched complaint, then to a fixpoint every survivor that
    holds shares of a removed client that fewer than t survivors hold;
    SPEC [R2-6]) left fewer than the round needs: the round aborts.  The
    abort carries the complaint blame (:attr:`AbortError.blame`)."""
    STORE_FAILED = "masked-input-store-failed"
    """The server's masked-input store (:mod:`securefl.protocol.storage`)
    failed: a masked input could not be kept (the message is refused, the
    running sum and the store unchanged) or a kept one could not be read
    back exactly when a complaint excluded its sender (the round aborts: no
    sum is produced)."""


def _peer_text(peer: int | str | None) -> str:
    if peer is None:
        return "unknown peer"
    if isinstance(peer, int):
        return f"client {peer}"
    return str(peer)


class ProtocolError(SecureFLError):
    """A secure aggregation protocol rule was broken.

    Attributes:
        peer: the client id (int) or ``"server"`` that broke the rule, or None.
        round: the :class:`securefl.Round` in which it happened, or None.
        rule: the :class:`Rule` broken.
        detail: a short human explanation without secret material.
    """

    def __init__(
        self,
        rule: Rule,
        detail: str = "",
        *,
        peer: int | str | None = None,
        round: Any = None,
    ) -> None:
        self.rule = rule
        self.detail = detail
        self.peer = peer
        self.round = round
        round_text = getattr(round, "name", None) or "no round"
        message = f"{_peer_text(peer)} broke rule '{rule.value}' in {round_text}"
        if detail:
            message += f": {detail}"
        super().__init__(message)


class LocalProtocolError(ProtocolError):
    """The local caller used a session object wrongly (e.g. fed it a message
    it does not expect in its current state)."""


class RemoteProtocolError(ProtocolError):
    """The remote peer (a client, or the server) broke the protocol.  The
    message that caused it was refused and nothing was revealed."""


class AbortError(SecureFLError):
    """The round was aborted; no result (and certainly no wrong result) is
    produced.  Typically fewer than ``threshold`` clients remained.

    Attributes:
        round: the round at which the protocol stopped.
        needed: how many participants were needed.
        available: how many there were.
        rule: the :class:`Rule` that forced the abort, when it is not simply
            too few participants (e.g. ``COMMITMENT_MISMATCH``), else None.
        blame: the clients the server held responsible before it aborted
            (``securefl.protocol.server.Blame`` records, e.g. both ends of
            the matched share complaints that left too few clients); empty
            when nobody was named.
    """

    def __init__(self, detail: str, *, round: Any = None, needed: int | None = None,
                 available: int | None = None, rule: Rule | None = None,
                 blame: tuple[Any, ...] = ()) -> None:
        self.round = round
        self.needed = needed
        self.available = available
        self.rule = rule
        self.blame = tuple(blame)
        round_text = getattr(round, "name", None) or "no round"
        super().__init__(f"aggregation aborted in {round_text}: {detail}")


class WorkerError(AbortError):
    """A worker of the caller's pool failed while the server removed the
    masks (a process killed, the pool shut down, memory exhausted): the
    session aborts and produces no result.  The message names only the kind of
    failure, never a secret the worker held; the worker's own traceback is
    not attached."""


class CryptoError(SecureFLError):
    """A cryptographic operation failed (authentication, invalid key)."""


class DecryptionError(CryptoError):
    """An AEAD ciphertext failed to authenticate (tampered, wrong key or
    wrong associated data)."""


class InvalidKeyError(CryptoError):
    """A public key or private key is malformed (wrong length, low order)."""


class SignatureError(CryptoError):
    """A signature did not verify under the pinned identity key."""


class InconsistentSharesError(CryptoError):
    """More than ``threshold`` Shamir shares were supplied and they do not lie
    on one polynomial of degree ``threshold - 1``."""


class EncodingError(SecureFLError, ValueError):
    """A model update cannot be encoded into (or decoded from) the ring:
    NaN/inf values, wrong shape or dtype, or a bit budget that could overflow."""


class PrivacyBudgetExceededError(SecureFLError):
    """Taking part in a round would push a client past its privacy budget."""


class WireFormatError(RemoteProtocolError):
    """Bytes received from a peer do not decode to a valid protocol message:
    unparseable, an unknown protocol version, a field truncated or oversized,
    a duplicated client id, a misaligned masked vector, or a non-canonical
    encoding.  Nothing from such bytes reaches a session.

    Attributes:
        reason: a stable identifier of what is wrong (see
            ``securefl.wire.codec.WireIssue``), e.g. ``"unknown-version"``.
        field: the offending field's dotted name, or None.
    """

    def __init__(self, detail: str, *, reason: str, field: str | None = None,
                 rule: Rule = Rule.MALFORMED, peer: int | str | None = None,
                 round: Any = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(rule, f"[{reason}] {detail}", peer=peer, round=round)


class LedgerError(SecureFLError):
    """The privacy ledger is missing, empty, malformed or not append-safe
    (e.g. a truncated last line).  Nothing is written over it."""


class ModelIncompatibleError(ConfigurationError):
    """A model has layers that DP-SGD cannot train (e.g. ``BatchNorm``, whose
    output for one example depends on the rest of the batch, so no
    per-example gradient exists to clip).  Raised up front, before any
    training; the message names every such layer by its module path and class,
    and the fix.

    Attributes:
        layers: the offending layers, as
            :class:`securefl.privacy.layers.IncompatibleLayer` values.
    """

    def __init__(self, message: str, *, layers: tuple[Any, ...] = ()) -> None:
        self.layers = layers
        super().__init__(message)


class DataProblem(str, enum.Enum):
    """What is wrong with a data set, found before any training.  The value is
    a stable identifier (it appears in the message of a
    :class:`DataValidationError`)."""

    EMPTY = "empty"
    """The data set holds no example."""
    LENGTH_MISMATCH = "features-and-targets-differ-in-length"
    """Features and targets do not have the same number of examples."""
    NON_FINITE_FEATURES = "non-finite-features"
    """A feature is NaN or infinite."""
    NON_FINITE_TARGETS = "non-finite-targets"
    """A target is NaN or infinite."""
    LABEL_OUT_OF_RANGE = "label-out-of-range"
    """A class label is outside ``[0, num_classes)``."""
    FEATURE_SHAPE_MISMATCH = "feature-shape-mismatch"
    """Examples of different data sets (clients, test set) have different
    shapes, or the model does not accept them."""
    TARGET_SHAPE_MISMATCH = "target-shape-mismatch"
    """Targets of different data sets have different shapes or kinds (class
    labels and real values), or the model's output does not match them."""
    UNREADABLE = "unreadable"
    """The data cannot be turned into tensors (an item that is not a pair, a
    value that is not numeric)."""


class DataValidationError(ConfigurationError):
    """A data set was refused before any training.  The message names whose
    data it is (``"client 3"``, ``"the test set"``) and the problem, and
    counts the offending entries; it quotes no feature value.

    Attributes:
        who: whose data it is.
        problem: the :class:`DataProblem`.
        detail: a human explanation and the fix.
    """

    def __init__(self, problem: DataProblem, detail: str, *, who: str) -> None:
        self.problem = DataProblem(problem)
        self.who = who
        self.detail = detail
        super().__init__(f"{who}: [{self.problem.value}] {detail}")
