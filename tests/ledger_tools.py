"""Tools for tests that play the adversary against a run directory: read the
ledger's records, change them, and write everything back consistently (a
re-computed hash chain and commits, and the checkpoint's and metrics' ledger
anchors moved to the new head, and the run store, which would expose the
rewrite, deleted), so that only recomputation can catch the change."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from securefl.privacy.ledger import canonical, record_digest

Record = dict[str, Any]


def records(run: Path) -> list[Record]:
    """The ledger's records, parsed, in file order."""
    return [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]


def write_chained(run: Path, recs: list[Record], *, recount: bool = True,
                  anchors: bool = True) -> None:
    """Write ``recs`` as the ledger with a fresh, valid hash chain; with
    ``recount`` every commit's ``rows`` is set to its block's size; with
    ``anchors`` the checkpoint and metrics anchors point at the new head of
    the round they record."""
    prev = None
    lines = []
    block = 0
    heads: dict[int, str] = {}
    for rec in recs:
        rec = dict(rec)
        rec["prev"] = prev
        if rec.get("type") == "commit" and recount:
            rec["rows"] = block
        block = 0 if rec.get("type") == "commit" else block + (rec.get("type") == "row")
        line = canonical(rec)
        lines.append(line)
        prev = record_digest(line)
        if rec.get("type") == "commit" and rec.get("stage") == "settled":
            heads[int(rec["round"])] = prev
    (run / "ledger.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    for suffix in ("", "-wal", "-shm"):  # the store holds the original ledger
        (run / f"run.sqlite{suffix}").unlink(missing_ok=True)
    forget_store(run)  # a consistent rewrite also drops the exports' mention of it
    if anchors:
        set_anchors(run, heads)


def forget_store(run: Path) -> None:
    """Remove the exports' record that the run has a run store (what an
    adversary rewriting the exports consistently does after deleting it)."""
    path = run / "checkpoint.pt"
    if path.exists():
        data = torch.load(path, weights_only=False)
        data["extra"].pop("run_store", None)
        torch.save(data, path)
    metrics_path = run / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        metrics.pop("run_store", None)
        metrics_path.write_text(json.dumps(metrics, allow_nan=False))


def set_anchors(run: Path, heads: dict[int, str], *, round_number: int | None = None) -> None:
    """Point the checkpoint's and metrics' ledger anchors at ``heads`` (the
    settled commit digests by round); with ``round_number`` also set the
    checkpoint's round."""
    path = run / "checkpoint.pt"
    data = torch.load(path, weights_only=False)
    if round_number is not None:
        data["round"] = round_number
    r = data["round"]
    data["extra"]["ledger"] = {"round": r, "head": heads.get(r, "")}
    torch.save(data, path)
    metrics = json.loads((run / "metrics.json").read_text())
    r = metrics["rounds"][-1]["round"] if metrics["rounds"] else 0
    metrics["ledger"] = {"round": r, "head": heads.get(r, "")}
    (run / "metrics.json").write_text(json.dumps(metrics, allow_nan=False))


def tampered_copy(source: Path, dest: Path,
                  change: Callable[[list[Record]], list[Record]]) -> Path:
    """Copy a run and rewrite its ledger with ``change`` applied, re-chained
    and re-anchored."""
    shutil.copytree(source, dest)
    write_chained(dest, change(records(dest)))
    return dest
