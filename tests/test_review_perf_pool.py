"""Adversarial review of the server's unmasking in a caller's pool
(``ServerSession(unmask_pool=...)``, securefl.protocol.unmasking), with real
sessions.

The pool is the caller's ("anything with ``map``").  The server cannot check
the *values* of a partial sum (that would be redoing the work), but it can
check that it got exactly one partial per task, each a vector of the ring's
dtype and length.  Before the fix, a pool that lost a task's result (a
truncated ``map``) or returned a short array (numpy broadcasts a length-1
array over the whole sum) produced a wrong sum, silently.  These must now
abort with :class:`WorkerError`; so must a pool that was shut down before the
last round closed.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from securefl import Round, SecAggConfig
from securefl.errors import WorkerError
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.server import ServerSession, ServerState

CONFIG = SecAggConfig(num_clients=6, vector_length=40, bits=20, threshold=3)


class _Faulty:
    """A pool (threads underneath) whose ``map`` results are altered by
    ``alter``."""

    def __init__(self, inner: ThreadPoolExecutor,
                 alter: Callable[[list[np.ndarray]], Iterable[Any]]) -> None:
        self.inner = inner
        self.alter = alter

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        return iter(self.alter(list(self.inner.map(fn, *iterables))))


class _Pooled(SessionDriver):
    """A session whose server unmasks in ``pool``; client 6 drops before its
    masked input, so pairwise masks are removed too."""

    def __init__(self, pool: Any) -> None:
        gen = np.random.default_rng(5)
        self.inputs = {c: gen.integers(0, 2**20, CONFIG.vector_length, dtype=np.uint64)
                       for c in CONFIG.ids}
        super().__init__(CONFIG, self.inputs, dropouts={6: Round.MASKED_INPUT_COLLECTION})
        self.server = ServerSession(CONFIG, unmask_pool=pool, workers=2)


def _honest(parts: list[np.ndarray]) -> list[np.ndarray]:
    return parts


def _drop_last(parts: list[np.ndarray]) -> list[np.ndarray]:
    assert len(parts) > 1
    return parts[:-1]


def _shorten(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [p[:1] for p in parts]


def _extra(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [*parts, parts[0]]


def _floats(parts: list[np.ndarray]) -> list[Any]:
    return [p.astype(np.float64) for p in parts]


def test_an_honest_pool_gives_the_exact_sum() -> None:
    with ThreadPoolExecutor(2) as inner:
        driver = _Pooled(_Faulty(inner, _honest))
        driver.run()
    expected = sum(driver.inputs[c] for c in (1, 2, 3, 4, 5)) & np.uint64(2**20 - 1)
    assert np.array_equal(driver.result.total, expected)


@pytest.mark.parametrize("alter", [_drop_last, _shorten, _extra, _floats],
                         ids=["lost-result", "short-array", "extra-result", "float-array"])
def test_a_pool_returning_the_wrong_partials_aborts(alter: Callable[..., Any]) -> None:
    with ThreadPoolExecutor(2) as inner:
        driver = _Pooled(_Faulty(inner, alter))
        with pytest.raises(WorkerError) as info:
            driver.run()
    assert info.value.round is Round.UNMASKING
    assert driver.server.state is ServerState.ABORTED


def test_a_pool_shut_down_before_the_last_round_aborts() -> None:
    inner = ThreadPoolExecutor(2)
    driver = _Pooled(inner)
    driver.start()
    driver.close()
    driver.step()
    driver.step()  # R1 and R2 closed: the unmasking requests are out
    inner.shutdown(wait=True)
    driver.answer()
    with pytest.raises(WorkerError) as info:
        driver.close()
    assert info.value.round is Round.UNMASKING
    assert driver.server.state is ServerState.ABORTED


class _Leaky:
    """A pool whose ``map`` fails with an exception carrying a marker (as a
    worker's traceback text might carry what the worker held)."""

    MARK = "S3CR3T-f00dfeed"

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        try:
            raise ValueError(f"inner detail {self.MARK}")
        except ValueError as inner:
            raise RuntimeError(f"worker failed: {self.MARK}") from inner


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def test_the_worker_error_carries_nothing_of_the_workers_failure() -> None:
    driver = _Pooled(_Leaky())
    with pytest.raises(WorkerError) as info:
        driver.run()
    for e in _chain(info.value):
        assert _Leaky.MARK not in str(e) and _Leaky.MARK not in repr(e)
    text = "".join(traceback.format_exception(info.value, chain=True))
    assert _Leaky.MARK not in text
