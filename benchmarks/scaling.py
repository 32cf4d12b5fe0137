"""The scaling table: full in-process rounds over n (at fixed m) and m (at fixed n).

Usage:
  python benchmarks/scaling.py [--ns 100 300 1000 3000 10000] [--ms 10000 ... 10000000]
      [--fixed-m 100000] [--fixed-n 100] [--dropout 0.05] [--budget 300] [--workers 1]
      [--out benchmarks/results/scaling]

Each cell is one round (Harary graph from the SecAgg+ parameter finder where it
finds one, every message through the v1 codec, the sum checked exactly) in a
child process of its own, so its peak RSS is its own.  Prints a Markdown table
(time, cryptographic floor, peak memory, bytes on the wire per client), the
fitted log-log exponents, and with ``--out`` writes strict JSON, the table and
a log-log PNG.  Cells predicted past ``--budget`` seconds are skipped and say
so.  The machinery is :mod:`securefl.bench.scaling` (on top of
:func:`securefl.bench.core.run_round`, the round ``scale_round.py`` times);
the side-by-side Flower comparison is ``securefl bench --targets``.
"""

import sys

from securefl.bench.scaling import main

if __name__ == "__main__":
    sys.exit(main())
