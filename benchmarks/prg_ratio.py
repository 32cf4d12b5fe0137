"""Mask PRG on the round's path (apply with many keys) against raw AES-256-CTR.

Usage: python benchmarks/prg_ratio.py [--baseline DIR] [--mb 16] [--keys 8] [--rounds 9]

For every bit width, times ``MaskExpander.apply`` (``--keys`` keys, half
subtracted, one thread) and raw ``cryptography`` AES-256-CTR keystream of the
same bytes into a reused buffer, interleaved round by round, best of
``--rounds``; prints keystream GB/s and the ratio PRG / raw (1.0 = the PRG
costs nothing beyond the cipher).  ``openssl speed`` is printed once as the
per-core reference.  With ``--baseline DIR`` the prg.py of another checkout
is timed in the same rounds.  Every result is checked exactly against the
baseline (or against expand()).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from types import ModuleType

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefl.bench.core import openssl_aes_ctr_gbps
from securefl.hazmat import prg


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("prg_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default=None)
    parser.add_argument("--mb", type=int, default=16)
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--bits", type=int, nargs="*",
                        default=[1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 48, 63, 64])
    args = parser.parse_args()
    base = _load(os.path.join(args.baseline, "securefl/hazmat/prg.py")) if args.baseline else None
    total = args.mb << 20
    keys = [(os.urandom(32), i % 2 == 1) for i in range(args.keys)]
    zeros = bytes(prg.DEFAULT_CHUNK_BYTES)
    out = bytearray(len(zeros) + 15)

    def raw() -> None:
        for key, _ in keys:
            update = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update_into
            for _ in range(total // len(zeros)):
                update(zeros, out)

    print(f"openssl speed aes-256-ctr: {openssl_aes_ctr_gbps()} GB/s per core")
    print(f"{'bits':>4} {'raw GB/s':>9} {'new/raw':>8}" + (f" {'base/raw':>9} {'new/base':>9}"
                                                          if base else ""))
    for bits in args.bits:
        width = prg.ring_dtype(bits).itemsize
        new = prg.MaskExpander(total // width, bits)
        acc_new = new.zeros()
        old = base.MaskExpander(total // width, bits) if base else None
        acc_old = old.zeros() if old else None
        best = {"raw": float("inf"), "new": float("inf"), "old": float("inf")}
        runs = [("raw", raw, None, None), ("new", None, new, acc_new)]
        if old is not None:
            runs.append(("old", None, old, acc_old))
        for _ in range(args.rounds):
            for name, fn, expander, acc in runs:
                start = time.perf_counter()
                if fn is not None:
                    fn()
                else:
                    expander.apply(keys, acc)
                best[name] = min(best[name], time.perf_counter() - start)
        if old is not None:
            assert np.array_equal(acc_new, acc_old), bits
        gbps = len(keys) * total / best["raw"] / 1e9
        line = f"{bits:4d} {gbps:9.2f} {best['raw'] / best['new']:8.2f}"
        if old is not None:
            line += f" {best['raw'] / best['old']:9.2f} {best['old'] / best['new']:9.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
