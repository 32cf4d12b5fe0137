"""Crash points for tests (test-only; inert unless ``SECUREFL_TEST_CRASH_AT``
is set).

The crash-consistency tests run a federation in a subprocess with
``SECUREFL_TEST_CRASH_AT=NAME:ROUND`` and check what a SIGKILL at that point
leaves on disk.  :func:`crash_point` sends the process SIGKILL (no clean-up,
no ``finally`` blocks, no flushing: exactly what a kill -9 or a power cut of
the process does) when it is reached with a matching name and round.  The
named points are:

``after-in-flight``
    the round's in-flight ledger rows are durable (in the run store and
    ``ledger.jsonl``), no client has trained;
``mid-training``
    after the first client of the round trained;
``after-release``
    the server unmasked (released) a round's user-level sum, the round is
    not settled (nothing of its outcome is on disk);
``mid-commit``
    inside the run store's transaction that commits a round, before
    ``COMMIT`` (:meth:`securefl.federation.runstore.RunStore.commit_round`):
    SQLite rolls it back;
``after-commit``
    the round is committed in the run store, nothing of it is exported;
``ledger-torn``
    inside the export of a settled block to ``ledger.jsonl`` (or, for a
    :class:`~securefl.privacy.ledger.PrivacyLedger` written alone, its
    settlement write): half of the block's bytes are on disk (a torn
    write), the rest never will be;
``after-ledger``
    the round's ledger block is exported, ``checkpoint.pt`` not yet;
``mid-export``
    ``checkpoint.pt`` is exported, ``metrics.json`` not yet.

Nothing else in securefl reads the variable; unset, every call is a dictionary
lookup that returns.
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_ENV", "crash_point", "crash_requested"]

CRASH_ENV = "SECUREFL_TEST_CRASH_AT"


def crash_requested(name: str, round_number: int) -> bool:
    """Whether ``SECUREFL_TEST_CRASH_AT`` names this point and round."""
    return os.environ.get(CRASH_ENV) == f"{name}:{int(round_number)}"


def crash_point(name: str, round_number: int) -> None:
    """SIGKILL this process if ``SECUREFL_TEST_CRASH_AT`` is ``NAME:ROUND``
    for this point and round; otherwise do nothing."""
    if crash_requested(name, round_number):
        os.kill(os.getpid(), signal.SIGKILL)
