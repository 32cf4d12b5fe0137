"""Mask PRG on the round's path (apply with many keys) against raw AES-256-CTR
and against ``openssl speed``, all measured in the same run.

Usage: python benchmarks/prg_ratio.py [--baseline DIR] [--mb 16] [--keys 8] [--rounds 9]

For every bit width, times (one thread, best of ``--rounds``, interleaved round
by round, in this thread's CPU time, ``time.thread_time``, because ``openssl
speed`` divides by its user CPU time unless given ``-elapsed``: on a shared
machine wall-clock time would charge the PRG for other processes' time slices
and not OpenSSL):

* ``new``: ``MaskExpander.apply`` with ``--keys`` keys, half subtracted, over
  ``--mb`` MiB of keystream per key, into an accumulator;
* ``raw``: ``cryptography``'s AES-256-CTR writing the same keystream bytes in
  16 KiB blocks into one reused (cached) buffer, as ``openssl speed`` does;
* ``add``: numpy adding a cached keystream chunk into the accumulator, chunk
  by chunk as ``apply`` does, with no cipher: the cost of the ring arithmetic
  alone;
* ``openssl speed -evp aes-256-ctr -bytes 16384`` on one core, once per bit
  width (between the rounds of that width).

Prints keystream GB/s of ``raw``, the ratios ``new/openssl`` (the target: the
PRG's keystream rate over OpenSSL's per core), ``new/raw``, ``raw/openssl``,
and ``bound/openssl``, where ``bound`` = 1 / (1/raw + 1/add) is what any PRG
that generates the keystream with this cipher and then adds it with numpy can
reach.  With ``--baseline DIR`` the prg.py of another checkout is timed in the
same rounds.  Every result is checked exactly against the baseline (or against
expand()).
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
    zeros = bytes(16384)
    out = bytearray(len(zeros) + 15)

    def raw() -> None:
        for key, _ in keys:
            update = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update_into
            for _ in range(total // len(zeros)):
                update(zeros, out)

    print(f"load average {os.getloadavg()}")
    print(f"{'bits':>4} {'raw GB/s':>9} {'openssl':>8} {'new/ossl':>9} {'new/raw':>8}"
          f" {'raw/ossl':>9} {'bound/ossl':>11}"
          + (f" {'base/raw':>9} {'new/base':>9}" if base else ""))
    worst = float("inf")
    for bits in args.bits:
        width = prg.ring_dtype(bits).itemsize
        new = prg.MaskExpander(total // width, bits)
        acc_new = new.zeros()
        old = base.MaskExpander(total // width, bits) if base else None
        acc_old = old.zeros() if old else None
        chunk = min(prg.DEFAULT_CHUNK_BYTES // width, total // width)
        stream = new.zeros()[:chunk]
        scratch = new.zeros()

        def add(acc: np.ndarray = scratch, stream: np.ndarray = stream,
                chunk: int = chunk) -> None:
            # chunk-major, as apply() runs: each accumulator chunk stays cached
            # while every key's keystream is added into it
            tail = len(acc) % chunk
            for a in range(0, len(acc) - tail, chunk):
                seg = acc[a:a + chunk]
                for _ in keys:
                    np.add(seg, stream, out=seg)
            if tail:
                for _ in keys:
                    np.add(acc[-tail:], stream[:tail], out=acc[-tail:])

        best = {"raw": float("inf"), "new": float("inf"), "old": float("inf"),
                "add": float("inf")}
        runs = [("raw", raw, None, None), ("new", None, new, acc_new), ("add", add, None, None)]
        if old is not None:
            runs.append(("old", None, old, acc_old))
        ossl = None
        for i in range(args.rounds):
            for name, fn, expander, acc in runs:
                start = time.thread_time()
                if fn is not None:
                    fn()
                else:
                    expander.apply(keys, acc)
                best[name] = min(best[name], time.thread_time() - start)
            if i == args.rounds // 2:
                ossl = openssl_aes_ctr_gbps()
        if old is not None:
            assert np.array_equal(acc_new, acc_old), bits
        check = new.zeros()
        expander = prg.MaskExpander(total // width, bits)
        for key, negate in keys:
            mask = expander.expand(key)
            (np.subtract if negate else np.add)(check, mask, out=check)
        # apply() ran once per round on the same accumulator: rounds times the sum
        expected = expander.reduce(check * np.asarray(args.rounds, dtype=check.dtype))
        assert np.array_equal(acc_new, expected), bits
        gbps = len(keys) * total / best["raw"] / 1e9
        new_gbps = len(keys) * total / best["new"] / 1e9
        add_gbps = len(keys) * total / best["add"] / 1e9
        bound = 1 / (1 / gbps + 1 / add_gbps)
        if ossl:
            worst = min(worst, new_gbps / ossl)
        line = (f"{bits:4d} {gbps:9.2f} {ossl or float('nan'):8.2f}"
                f" {new_gbps / (ossl or float('nan')):9.2f} {best['raw'] / best['new']:8.2f}"
                f" {gbps / (ossl or float('nan')):9.2f} {bound / (ossl or float('nan')):11.2f}")
        if old is not None:
            line += f" {best['raw'] / best['old']:9.2f} {best['old'] / best['new']:9.2f}"
        print(line, flush=True)
    print(f"worst new/openssl over the widths: {worst:.2f}; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
