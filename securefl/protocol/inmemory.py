"""Run a whole secure aggregation session in one process.

:class:`Driver` is the one loop that moves messages between a server and its
clients in memory, round by round, with hooks for dropouts, tampering,
interception, timing and recording; :class:`SessionDriver` builds it over real
:class:`ClientSession` and :class:`ServerSession` objects.  Tests, examples,
the benchmark, the conformance scenarios, the vector generator and
:func:`secure_sum` (used by the in-process simulator) all drive sessions
through it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securefl.errors import ConfigurationError, LocalProtocolError, Rule
from securefl.hazmat import signing
from securefl.hazmat.prg import ring_dtype
from securefl.hazmat.randomness import RandomSource, default_random
from securefl.protocol.client import ClientSession
from securefl.protocol.config import Round, SecAggConfig, SecurityMode
from securefl.protocol.messages import Envelope
from securefl.protocol.server import AggregationResult, Executor, ServerSession
from securefl.protocol.storage import DirectFileStore, FileStore, MaskedInputStore
from securefl.protocol.validation import validate_input_vector


def secure_sum(
    inputs: Mapping[int, np.ndarray],
    config: SecAggConfig,
    dropouts: Mapping[int, Round] | None = None,
    *,
    rng: RandomSource | None = None,
    executor: Executor | None = None,
    spill: bool | Literal["buffered"] | None = None,
) -> AggregationResult:
    """Securely sum ``inputs`` with the full protocol, in one process.

    Args:
        inputs: client id -> 1-D array of ``vector_length`` unsigned ints below
            2^bits, one for every id in ``config.client_ids``.
        config: the session configuration.
        dropouts: client id -> the first :class:`Round` at which it stops
            answering (it answered every earlier round).  In semi-honest mode
            ``CONSISTENCY_CHECK`` means "answers no round after its masked
            input", the same as ``UNMASKING``.
        rng: secret randomness for every party (default OS CSPRNG); pass a
            :class:`~securefl.hazmat.randomness.DeterministicRandom` only for
            reproducible tests.
        executor: optional executor for mask expansion (clients and server);
            by default a thread pool over the machine's CPUs is used for long
            vectors (AES-CTR and numpy release the GIL).
        spill: where the server keeps the masked inputs until the
            masked-input round closes (a late complaint may take one back out
            of the sum).  True: a
            store from :func:`spill_store` (an unnamed file in the temporary
            directory, written with direct I/O where the file system allows
            it; closed, hence removed, when this call returns or raises);
            ``"buffered"``: the same through the page cache
            (``spill_store(direct=False)``, for a disk slower than the
            clients).  Either way each client
            forgets its sent masked input once delivered (this call is the
            clients' only transport and never repeats a message), so memory
            beyond the inputs is O(m): a constant number of vectors,
            whatever the number of clients.  False: in memory (n ring-width
            vectors, shared with the clients' sent replies).  None (default):
            True iff ``num_clients * vector_length * ring width`` exceeds
            :data:`SPILL_BYTES`.

    Returns:
        the :class:`AggregationResult`: ``.total`` is the exact sum mod 2^bits
        of the inputs of ``.survivors``.

    Raises:
        AbortError: fewer than ``threshold`` clients remained at some round.
        ConfigurationError: inputs do not match the configuration.
        LocalProtocolError: an input vector is malformed or out of range.
    """
    dropouts = dict(dropouts or {})
    _check_ids(inputs, config)
    for cid, rnd in dropouts.items():
        if cid not in config.ids:
            raise ConfigurationError(f"dropout for unknown client {cid}")
        if not isinstance(rnd, Round):
            raise ConfigurationError(f"dropout of client {cid} must be a Round, got {rnd!r}")
    vectors = {}
    for cid, v in inputs.items():
        # checked now (without a copy), but held as given: each client makes
        # its own ring-dtype copy only when it masks it (R2), checking it again.
        # An array goes to the check as is (np.asarray would drop a masked
        # array's mask, which the check refuses); anything else is converted
        vectors[cid] = validate_input_vector(_as_array(v, cid), config, cid, local=True)
    if spill not in (None, True, False, "buffered"):
        raise ConfigurationError(f"spill must be True, False, 'buffered' or None, got {spill!r}")
    if spill is None:
        spill = config.num_clients * config.vector_length * ring_dtype(
            config.bits).itemsize > SPILL_BYTES
    if executor is None and (os.cpu_count() or 1) > 1 and config.vector_length >= PARALLEL_MIN:
        with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
            return _run(config, vectors, dropouts, rng, pool, spill)
    return _run(config, vectors, dropouts, rng, executor, spill)


PARALLEL_MIN = 1 << 17
"""Vectors at least this long are masked by several threads in ``secure_sum``."""

SPILL_BYTES = 1 << 30
"""``secure_sum(spill=None)`` spills the server's masked inputs to a
temporary file when they would take more than this many bytes in memory
(``num_clients * vector_length`` ring elements of 1, 2, 4 or 8 bytes)."""


def _run(config: SecAggConfig, vectors: Mapping[int, np.ndarray], dropouts: Mapping[int, Round],
         rng: RandomSource | None, executor: Executor | None,
         spill: bool | Literal["buffered"]) -> AggregationResult:
    with (spill_store(direct=spill is True) if spill else contextlib.nullcontext()) as store:
        driver = _StreamingDriver(config, vectors, dropouts=dropouts, rng=rng, executor=executor,
                                  store=store)
        driver.run()
        return driver.result


@contextlib.contextmanager
def spill_store(directory: str | None = None, *,
                direct: bool = True) -> Iterator[MaskedInputStore]:
    """A store for a server's masked inputs on an unnamed file in
    ``directory`` (default: ``tempfile.gettempdir()``), closed, hence removed,
    when the block exits (also on an exception).

    With ``direct`` (the default) the file is opened ``O_TMPFILE | O_EXCL |
    O_DIRECT`` (no name, and none can be given to it later) and a two-block
    pattern is written and read back equal, to check that the file system
    takes direct I/O; the store is then a
    :class:`~securefl.protocol.storage.DirectFileStore`, whose vectors go to
    the device without passing through the page cache (one memory copy each:
    0.8-1.05 s of CPU for a 3.6 GB round on the benchmark machine, against
    1.4-5.9 s through the page cache; ``benchmarks/spill_store.py``).
    Where the platform has no such flags or the file system refuses them or
    fails the probe (some file systems and kernels), or with
    ``direct=False``, it is a :class:`~securefl.protocol.storage.FileStore` on
    ``tempfile.TemporaryFile(dir=directory)``: the kernel copies the vectors
    into its page cache and writes them back later.  Either way the file has
    no name on disk and holds only what the server received.

    Direct writes return when the device has the data, so a disk slower
    than the clients' uploads slows the round down (buffered writes are
    absorbed by free memory until the kernel's dirty-page limit); pass
    ``direct=False`` on such a machine.

    Raises:
        OSError: the file could not be created at all.
    """
    directory = tempfile.gettempdir() if directory is None else directory
    fd = _open_direct(directory) if direct else None
    if fd is not None:
        try:
            store = DirectFileStore(fd)
        except BaseException:
            os.close(fd)
            raise
        try:
            yield store
        finally:
            store.close()
            os.close(fd)
        return
    with tempfile.TemporaryFile(dir=directory) as file:
        yield FileStore(file)


def _open_direct(directory: str) -> int | None:
    """An ``O_TMPFILE | O_EXCL | O_DIRECT`` descriptor in ``directory`` (no
    name, and ``O_EXCL`` stops anyone from giving it one through
    ``/proc/<pid>/fd``) that wrote a non-zero two-block pattern and read it
    back equal into a cleared buffer, or None where that is not possible."""
    flags = getattr(os, "O_TMPFILE", 0), getattr(os, "O_DIRECT", 0)
    if not all(flags):
        return None
    try:
        fd = os.open(directory, os.O_RDWR | os.O_EXCL | os.O_CLOEXEC | flags[0] | flags[1],
                     0o600)
    except OSError:
        return None
    try:
        probe = DirectFileStore(fd)
    except OSError:
        good = False
    else:
        good = probe.works()
        probe.close()
    if not good:
        os.close(fd)
        return None
    return fd


class ServerEndpoint(Protocol):
    """What :class:`Driver` needs of a server: a :class:`ServerSession`, or a
    conformance adapter that speaks wire bytes."""

    def receive(self, message: Any) -> None:
        """Take one client message for the current round."""

    def close_round(self) -> Sequence[Any]:
        """Close the round; the messages out, as :class:`Envelope` or
        ``(recipient, message)`` pairs."""


class ClientEndpoint(Protocol):
    """What :class:`Driver` needs of a client."""

    def start(self) -> Any:
        """R0: the advertisement."""

    def handle(self, message: Any) -> Any:
        """Answer one server message."""


def next_round(rnd: Round | None, config: SecAggConfig) -> Round | None:
    """The round after ``rnd`` in ``config``'s mode (None after the last)."""
    if rnd is None or rnd is Round.UNMASKING:
        return None
    nxt = Round(rnd + 1)
    if nxt is Round.CONSISTENCY_CHECK and config.mode is not SecurityMode.ACTIVE:
        nxt = Round.UNMASKING
    return nxt


class Driver:
    """One server and its clients, stepped round by round in memory.

    The one loop that moves messages between a server and its clients, used
    by :func:`secure_sum`, the benchmark, the conformance scenarios, the
    vector generator and the test harnesses.  Either step it by hand
    (:meth:`start`, :meth:`close`, :meth:`answer`) or :meth:`run` it to the
    end.  Subclasses change what happens to each message by overriding the
    hooks: :meth:`answers` (dropouts), :meth:`to_server` / :meth:`to_client`
    (tamper with or intercept a message: return None to drop it), and
    :meth:`client_start`, :meth:`client_handle`, :meth:`server_receive`,
    :meth:`server_close` (wrap a party's call, e.g. to time or record it).

    Messages are opaque here: session objects, or wire bytes for adapters.
    Every client message produced is recorded in :attr:`sent` (by round),
    whether or not it reached the server.

    Args:
        config: the session configuration (names the rounds).
        server: the server.
        clients: id -> client, in the order they are driven.
        dropouts: client id -> the first :class:`Round` it does not answer
            (it answered every earlier one); see :func:`secure_sum`.
    """

    def __init__(self, config: SecAggConfig, server: ServerEndpoint,
                 clients: Mapping[int, ClientEndpoint], *,
                 dropouts: Mapping[int, Round] | None = None) -> None:
        self.config = config
        self.server = server
        self.clients = dict(clients)
        self.dropouts = dict(dropouts or {})
        self.pending: dict[int, Any] = {}
        self.sent: dict[Round, dict[int, Any]] = {}
        self.round: Round | None = Round.ADVERTISE_KEYS
        self.finished = False

    # -- hooks ----------------------------------------------------------------

    def answers(self, cid: int, rnd: Round) -> bool:
        """Does client ``cid`` answer in ``rnd``?  (The dropout schedule.)"""
        stop = self.dropouts.get(cid)
        return stop is None or rnd < stop

    def to_server(self, rnd: Round, cid: int, message: Any) -> Any | None:
        """What of client ``cid``'s reply reaches the server (None: nothing)."""
        return message

    def to_client(self, rnd: Round, cid: int, message: Any) -> Any | None:
        """What of the server's message reaches client ``cid`` (None: nothing)."""
        return message

    def client_start(self, cid: int) -> Any:
        """Client ``cid`` starts (R0)."""
        return self.clients[cid].start()

    def client_handle(self, rnd: Round, cid: int, message: Any) -> Any:
        """Client ``cid`` answers ``message`` in ``rnd``."""
        return self.clients[cid].handle(message)

    def server_receive(self, rnd: Round, cid: int, message: Any) -> None:
        """The server receives client ``cid``'s message in ``rnd``."""
        self.server.receive(message)

    def server_close(self, rnd: Round) -> Sequence[Any]:
        """The server closes ``rnd``."""
        return self.server.close_round()

    def server_finished(self, out: Sequence[Any]) -> bool:
        """Has the server finished, having just sent ``out``?  (By default:
        it sent nothing.)"""
        return not out

    # -- steps ----------------------------------------------------------------

    def start(self, skip: Iterable[int] = ()) -> dict[int, Any]:
        """Every client starts; the adverts of those that answer and are not
        in ``skip`` are sent, each right after it is made."""
        skipped = set(skip)
        rnd = Round.ADVERTISE_KEYS
        adverts: dict[int, Any] = {}
        for c in self.clients:
            adverts[c] = self.client_start(c)
            if c not in skipped and self.answers(c, rnd):
                self._deliver(rnd, c, adverts[c])
        self.sent.setdefault(rnd, {}).update(adverts)
        return adverts

    def close(self) -> dict[int, Any]:
        """Close the server's round; remember (and return) what it sends.

        Raises:
            AbortError: from the server.
        """
        rnd = self.round
        if rnd is None:
            raise LocalProtocolError(Rule.SESSION_FINISHED, "the session is finished",
                                     peer="server")
        out = self.server_close(rnd)
        self.pending = dict(
            (e.recipient, e.message) if isinstance(e, Envelope) else e for e in out)
        self.finished = self.server_finished(out)
        self.round = None if self.finished else next_round(rnd, self.config)
        return self.pending

    def answer(self, skip: Iterable[int] = (), *, replace: Mapping[int, Any] | None = None,
               send: bool = True) -> dict[int, Any]:
        """Every pending recipient that answers and is not in ``skip``
        handles its message (``replace[c]`` instead, if given); then the
        replies go to the server, unless ``send`` is false.  Returns the
        replies."""
        rnd = self.round
        assert rnd is not None, "no round to answer"
        skipped = set(skip)
        replace = replace or {}
        replies: dict[int, Any] = {}
        for c, message in self.pending.items():
            if c in skipped or not self.answers(c, rnd):
                continue
            message = self.to_client(rnd, c, replace.get(c, message))
            if message is not None:
                replies[c] = self.client_handle(rnd, c, message)
        self.sent.setdefault(rnd, {}).update(replies)
        if send:
            self.send(replies)
        return replies

    def send(self, replies: Mapping[int, Any]) -> None:
        """Client id -> message: each goes (through :meth:`to_server`) to the
        server, in the current round."""
        rnd = self.round
        assert rnd is not None, "no round to send in"
        for c, reply in replies.items():
            self._deliver(rnd, c, reply)

    def step(self, skip: Iterable[int] = ()) -> dict[int, Any]:
        """:meth:`answer` then :meth:`close`."""
        self.answer(skip)
        return self.close()

    def run(self) -> None:
        """From the start, run every round until the server finishes.

        Raises:
            AbortError: the server aborted.
        """
        self.start()
        self.close()
        while not self.finished:
            self.step()

    def _deliver(self, rnd: Round, cid: int, message: Any) -> None:
        message = self.to_server(rnd, cid, message)
        if message is not None:
            self.server_receive(rnd, cid, message)


class SessionDriver(Driver):
    """A :class:`Driver` over fresh :class:`ServerSession` and
    :class:`ClientSession` objects (active mode: fresh identity keys, pinned
    at every party).

    Args:
        config: the session configuration.
        inputs: client id -> input vector (or None: provide it later), for
            every id in the configuration.
        dropouts: as for :class:`Driver`.
        rng: secret randomness for every party (default OS CSPRNG).
        executor: passed to every session (mask work spread over it).
        workers: passed to every session (segments to split the mask work into).
        identities: active mode: the clients' Ed25519 keys (default fresh).
        store: where the server keeps R2's masked inputs until it closes
            (see :class:`~securefl.protocol.server.ServerSession`; default in
            memory).

    Raises:
        ConfigurationError: ``inputs`` is not for exactly the configured ids.
    """

    server: ServerSession
    clients: dict[int, ClientSession]  # type: ignore[assignment]

    def __init__(self, config: SecAggConfig, inputs: Mapping[int, np.ndarray | None], *,
                 dropouts: Mapping[int, Round] | None = None, rng: RandomSource | None = None,
                 executor: Executor | None = None, workers: int | None = None,
                 identities: Mapping[int, Ed25519PrivateKey] | None = None,
                 store: MaskedInputStore | None = None) -> None:
        _check_ids(inputs, config)
        source = default_random(rng)
        self.identities: dict[int, Ed25519PrivateKey] = {}
        self.pinned: dict[int, Ed25519PublicKey] | None = None
        if config.mode is SecurityMode.ACTIVE:
            self.identities = dict(identities or {
                c: signing.generate_identity(source) for c in config.ids})
            self.pinned = {c: k.public_key() for c, k in self.identities.items()}
        server = ServerSession(config, peer_identities=self.pinned, rng=source,
                               executor=executor, workers=workers, store=store)
        clients = {c: ClientSession(config, c, input=inputs[c],
                                    identity_key=self.identities.get(c),
                                    peer_identities=self.pinned, rng=source,
                                    executor=executor, workers=workers)
                   for c in config.ids}
        super().__init__(config, server, clients, dropouts=dropouts)

    def server_finished(self, out: Sequence[Any]) -> bool:
        """The session says whether it finished."""
        return self.server.finished

    @property
    def result(self) -> AggregationResult:
        """The server's result (see :attr:`ServerSession.result`)."""
        return self.server.result


class _StreamingDriver(SessionDriver):
    """The driver of :func:`secure_sum`, in O(m) memory per live vector.

    A client gets its input only when it is about to mask it, and its masked
    input goes to the server at once and is not kept in :attr:`sent`: at any
    time one working copy of one input exists (inside the client that is
    masking), besides the caller's inputs and the server's store.  This
    driver is its clients' only transport and never repeats a message, so
    each client forgets its sent masked input once the server has it
    (:meth:`ClientSession.release_masked_input`): with a ``FileStore`` no
    masked vector stays in memory.
    """

    def __init__(self, config: SecAggConfig, inputs: Mapping[int, np.ndarray], *,
                 dropouts: Mapping[int, Round], rng: RandomSource | None,
                 executor: Executor | None, store: MaskedInputStore | None) -> None:
        super().__init__(config, dict.fromkeys(inputs), dropouts=dropouts, rng=rng,
                         executor=executor, store=store)
        self._inputs = inputs

    def client_handle(self, rnd: Round, cid: int, message: Any) -> Any:
        if rnd is Round.MASKED_INPUT_COLLECTION:
            self.clients[cid].provide_input(self._inputs[cid])
        return super().client_handle(rnd, cid, message)

    def answer(self, skip: Iterable[int] = (), *, replace: Mapping[int, Any] | None = None,
               send: bool = True) -> dict[int, Any]:
        if self.round is not Round.MASKED_INPUT_COLLECTION or not send or skip or replace:
            return super().answer(skip, replace=replace, send=send)
        rnd = self.round
        for c, message in self.pending.items():
            if self.answers(c, rnd):
                self._deliver(rnd, c, self.client_handle(rnd, c, message))
                self.clients[c].release_masked_input()
        self.pending = {}
        return {}


def _as_array(value: Any, cid: int) -> np.ndarray:
    """``value`` itself if it is an array, else ``np.asarray(value)``.

    Raises:
        LocalProtocolError: numpy cannot make an array of it (``MALFORMED``:
            e.g. a ragged list).
    """
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise LocalProtocolError(Rule.MALFORMED, f"the input of client {cid} is not an array"
                                 " of integers", peer=cid,
                                 round=Round.MASKED_INPUT_COLLECTION) from None


def _check_ids(inputs: Mapping[int, Any], config: SecAggConfig) -> None:
    if set(inputs) != set(config.ids):
        raise ConfigurationError(
            f"inputs are for clients {sorted(inputs)[:10]}, the configuration invites"
            f" {list(config.ids)[:10]}")
