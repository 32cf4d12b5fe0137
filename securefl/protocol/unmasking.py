"""The server's mask removal, split into tasks that worker processes run whole.

At round close the server must remove, from the sum of the masked inputs,
every survivor's self mask and every pairwise mask between a survivor and a
client that dropped after sharing.  At n=500 with 150 dropped that is 52,500
X25519 exchanges, as many key derivations and cipher set-ups, and 21 GB of
AES-CTR keystream.  ``cryptography`` holds the GIL for X25519 and for every
Python step around a key, so threads only spread the AES; the exchanges and
derivations then run one after another on the caller's thread.

Here the work is cut into :class:`MaskSumTask` s of decreasing numbers of
masks (the pool hands them out in order, so the tasks that end the round are
short and the workers finish together).  Each task is shipped, with the secrets
it needs (the reconstructed self-mask seeds and masking private keys of its
masks, and the survivors' public masking keys), to a worker through the
caller's executor; the worker does the key agreement, the same
domain-separated derivations as every client
(:mod:`securefl.protocol.derivation`), expands and adds the masks
(:class:`~securefl.hazmat.prg.MaskExpander`), and returns one partial vector:
the sum over its masks of what must be added to the masked sum, reduced mod
``2^bits``.  The caller adds the partial vectors to the masked sum.  The
arithmetic is that of the single-thread path, so the result is identical.

Nothing here creates a process.  The caller owns the pool: :func:`worker_pool`
is a clean default (a ``ProcessPoolExecutor`` started by the ``forkserver``
method where available, so no thread of the caller is forked, and shut down
when the ``with`` block exits).  Secrets reach the workers only through the
pool's pipes (pickled task arguments; no file is written) and live in a
worker only while its task runs.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from securefl.errors import InvalidKeyError, SecureFLError
from securefl.hazmat.agreement import exchange, load_public
from securefl.hazmat.prg import MaskExpander
from securefl.protocol import derivation as d

#: keys derived, then expanded, this many at a time (bounds the live cipher
#: contexts and keeps derivation and AES alternating on one core)
BATCH = 256
#: tasks per worker, of decreasing sizes (:func:`plan`): a worker slowed by
#: another process on its core holds up the others by at most the last, short,
#: tasks (each task costs one partial vector, about 1 ms at m=10^5)
TASKS_PER_WORKER = 8
#: the PRG's chunk: one 10^5-element vector of 4-byte words in one piece (the
#: accumulator and the keystream buffer stay in L2), longer vectors in pieces
CHUNK_BYTES = 1 << 19


@dataclass(frozen=True, repr=False)
class MaskSumTask:
    """One worker's share of the masks to remove.

    Attributes:
        length: the vector length ``m``.
        bits: the ring ``Z_{2^bits}``.
        session_id: the session id (public).
        seeds: ``(u, b_u)``: survivor ``u``'s reconstructed self-mask seed;
            its mask ``PRG(self_mask_key(b_u))`` is subtracted.  Secret.
        keys: ``(u, s_sk_u, vs)``: dropped client ``u``'s reconstructed
            masking private key and the survivors ``vs`` that masked with it;
            each mask ``PRG(pairwise_mask_key(X25519(s_sk_u, s_pk_v)))`` is
            subtracted if ``v < u`` (``v`` added it) and added otherwise.
            Secret.
        public: ``v -> s_pk_v`` for every ``v`` in ``keys`` (public).

    The repr shows only the counts, never the secrets.
    """

    length: int
    bits: int
    session_id: bytes
    seeds: tuple[tuple[int, bytes], ...]
    keys: tuple[tuple[int, bytes, tuple[int, ...]], ...]
    public: Mapping[int, bytes]

    @property
    def masks(self) -> int:
        """How many masks the task expands."""
        return len(self.seeds) + sum(len(vs) for _, _, vs in self.keys)

    def __repr__(self) -> str:
        return (f"MaskSumTask(length={self.length}, bits={self.bits},"
                f" self_masks={len(self.seeds)}, pair_masks={self.masks - len(self.seeds)})")


class PeerKeyRejectedError(SecureFLError):
    """A survivor's public masking key was refused by X25519 (low order) in a
    worker.  Carries only the client id; picklable, so it crosses the pool."""

    def __init__(self, peer: int) -> None:
        self.peer = peer
        super().__init__(f"client {peer}'s masking key is invalid")

    def __reduce__(self) -> tuple[type[PeerKeyRejectedError], tuple[int]]:
        return (PeerKeyRejectedError, (self.peer,))


def plan(length: int, bits: int, session_id: bytes, seeds: Mapping[int, bytes],
         keys: Mapping[int, bytes], peers: Mapping[int, Sequence[int]],
         public: Mapping[int, bytes], parts: int) -> list[MaskSumTask]:
    """Cut the masks into at most ``parts`` tasks of decreasing size.

    Task ``i`` holds about ``(2 parts - 2 i - 1) / parts^2`` of the masks (up to
    rounding; empty pieces are dropped): the first about twice the mean, the
    last about ``1/parts`` of it.  An executor that hands the tasks out in order
    (as ``ProcessPoolExecutor.map`` does) thus keeps every worker busy until
    the last short tasks, whatever the other processes on the machine do.

    Args:
        length: the vector length ``m``.
        bits: the ring ``Z_{2^bits}``.
        session_id: the session id.
        seeds: survivor -> self-mask seed, for every survivor.
        keys: dropped client -> masking private key.
        peers: dropped client -> the survivors that masked with it.
        public: survivor -> public masking key.
        parts: how many tasks at most (at least 1).

    Returns:
        the tasks in that order, none empty, sizes non-increasing up to
        rounding (an empty list when there is no mask at all).
        A dropped client's private key goes only to the tasks that hold one
        of its masks (its masks are consecutive): at most two when every task
        holds at least as many masks as it has.
    """
    # the masks in order: the self masks, then each dropped client's pairwise
    # masks (its survivors in the given order), cut by counts: no list of them
    own = sorted(seeds.items())
    rows = [(u, keys[u], tuple(peers[u])) for u in sorted(keys)]
    firsts = [len(own)]  # index of the first mask of each row, then the total
    for _, _, vs in rows:
        firsts.append(firsts[-1] + len(vs))
    total = firsts[-1]
    parts = max(1, min(parts, total))
    # piece i holds about (2 parts - 2 i - 1) / parts^2 of the masks: from about
    # twice the mean down to 1/parts of it, so the pieces that finish last are short
    bounds = [total * i * (2 * parts - i) // (parts * parts) for i in range(parts + 1)]
    tasks = []
    row = 0
    for lo, hi in itertools.pairwise(bounds):
        own_seeds = tuple(own[lo:hi])
        while row < len(rows) and firsts[row + 1] <= lo:
            row += 1
        own_keys = []
        j = row
        while j < len(rows) and firsts[j] < hi:
            u, raw, vs = rows[j]
            piece = vs[max(lo - firsts[j], 0):hi - firsts[j]]
            if piece:
                own_keys.append((u, raw, piece))
            j += 1
        needed = {v: public[v] for _, _, vs in own_keys for v in vs}
        if own_seeds or own_keys:
            tasks.append(MaskSumTask(length, bits, session_id, own_seeds, tuple(own_keys),
                                     needed))
    return tasks


def mask_sum(task: MaskSumTask) -> np.ndarray:
    """The sum, mod ``2^bits``, of what the task's masks contribute to the
    unmasked total: minus every self mask, minus or plus every pairwise mask
    (see :class:`MaskSumTask`), in the ring dtype.  Runs in a worker; a
    module-level function so that a process pool can pickle it.

    Raises:
        PeerKeyRejectedError: X25519 refused a survivor's public key.
    """
    expander = MaskExpander(task.length, task.bits, chunk_bytes=CHUNK_BYTES)
    acc = expander.zeros()
    for batch in _batches(task):
        expander.apply(batch, acc)
    return acc


def derive_keys(task: MaskSumTask) -> list[tuple[bytes, bool]]:
    """The task's ``(PRG key, subtract)`` jobs, for
    :meth:`~securefl.hazmat.prg.MaskExpander.apply` (the other split: keys
    derived in processes, AES in threads; ``benchmarks/unmask_floor.py
    --designs`` compares the two).

    Raises:
        PeerKeyRejectedError: X25519 refused a survivor's public key.
    """
    return [job for batch in _batches(task) for job in batch]


def _batches(task: MaskSumTask) -> Iterator[list[tuple[bytes, bool]]]:
    """The task's ``(PRG key, subtract)`` jobs, derived ``BATCH`` at a time."""
    sid = task.session_id
    batch = [(d.self_mask_key(seed, sid, u), True) for u, seed in task.seeds]
    public = {}
    for v, raw_public in task.public.items():  # each parsed once, used by every u
        try:
            public[v] = load_public(raw_public)
        except InvalidKeyError:
            raise PeerKeyRejectedError(v) from None
    for u, raw, vs in task.keys:
        private = X25519PrivateKey.from_private_bytes(raw)
        for v in vs:
            try:
                secret = exchange(private, public[v])
            except InvalidKeyError:
                raise PeerKeyRejectedError(v) from None
            # v added +PRG when v < u, -PRG when v > u: undo it
            batch.append((d.pairwise_mask_key(secret, sid, u, v), v < u))
            if len(batch) >= BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _warm_up() -> None:
    """Pool initializer: naming it makes each worker import this module (and
    the hazmat it uses) when it starts, not during the first task."""


@contextmanager
def worker_pool(workers: int | None = None) -> Iterator[ProcessPoolExecutor]:
    """A process pool for :class:`~securefl.protocol.server.ServerSession`'s
    ``unmask_pool``, shut down (every worker joined) when the block exits.

    Workers are started by ``forkserver`` where the platform has it (else
    ``spawn``), never by ``fork``: a fork would copy the caller's threads'
    state and memory, including its secrets, into every worker.

    A script that calls this must guard its entry point with
    ``if __name__ == "__main__":``: the workers import the main module.

    Args:
        workers: processes to start (default ``os.cpu_count()``).
    """
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    pool = ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1, mp_context=context,
                               initializer=_warm_up)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
