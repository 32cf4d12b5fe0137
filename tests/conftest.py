"""Test-suite settings.

Hypothesis runs without per-example deadlines everywhere (the machines are
shared 2-core boxes and timing belongs in benchmarks, not tests).  Under CI
(``CI=true``) it is also derandomized, so a landing never depends on which
examples one run happened to draw; locally it explores fresh examples every
run, and any failure it finds is printed with its reproduction blob.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings

settings.register_profile("local", deadline=None, print_blob=True)
settings.register_profile("ci", deadline=None, print_blob=True, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI", "").lower() in ("1", "true") else "local")


@pytest.fixture(autouse=True, scope="session")
def _session_node_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same for module- and session-scoped fixtures, which are set up
    before the per-test directory below (a module fixture that runs a Flower
    federation would otherwise write to the user's ~/.flwr)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SECUREFL_STATE_DIR", str(tmp_path_factory.mktemp("session-node-state")))
        yield


@pytest.fixture(autouse=True)
def _node_state_dir(tmp_path_factory: pytest.TempPathFactory,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower nodes keep their DP accountants on disk (securefl.flower.dpstate,
    default under ~/.flwr): every test gets its own state directory, so no
    test reads an accountant another test (or an earlier run) left behind."""
    monkeypatch.setenv("SECUREFL_STATE_DIR", str(tmp_path_factory.mktemp("node-state")))


@pytest.fixture
def direct() -> Iterator[Any]:
    """A :class:`~securefl.protocol.storage.DirectFileStore` from
    ``spill_store()`` in the temporary directory (the test is skipped where
    that file system takes no direct I/O), closed after the test."""
    from securefl.protocol.inmemory import spill_store
    from securefl.protocol.storage import DirectFileStore

    with spill_store() as store:
        if not isinstance(store, DirectFileStore):
            pytest.skip("the temporary directory's file system takes no direct I/O")
        yield store
