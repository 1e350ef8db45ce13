"""Benchmark: `lo2 generate` speed against the I/O floor measured in the same run.

Generates a dataset (default: the issue's target, 20 v2 runs with all 53 error cases, default rate)
with ``jobs=1`` (wall and CPU time) and with ``jobs=2``, then measures the same-run baseline: writing exactly the same
bytes into the same folder structure with one buffered write per file (what the generator would cost
if producing the text were free).  Prints seconds, lines/s, MB/s and the ratios generator / floor.

Usage:  .venv/bin/python bench/generate.py [--runs 20] [--layout v2] [--rate 1.0] [--errors-per-run N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rewrite(src: Path, dst: Path) -> float:
    """Write the bytes of every .log under ``src`` to the same relative path under ``dst``."""
    blobs = [(p.relative_to(src), p.read_bytes()) for p in sorted(src.rglob("*.log"))]
    t0 = time.perf_counter()
    for rel, data in blobs:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return time.perf_counter() - t0


def main() -> int:
    from batch.generate import GenerateConfig, generate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="runs to generate (default 20)")
    ap.add_argument("--layout", choices=("v1", "v2"), default="v2", help="dataset layout (default v2)")
    ap.add_argument("--rate", type=float, default=None, help="traffic multiplier (default: the layout's)")
    ap.add_argument("--errors-per-run", type=int, default=None, help="error cases per run (default all 53)")
    ap.add_argument("--seed", type=int, default=42, help="generator seed")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    try:
        results = {}
        cpu1 = 0.0
        for jobs in (1, 2):
            out = tmp / f"jobs{jobs}"
            t0, c0 = time.perf_counter(), time.process_time()
            res = generate(GenerateConfig(out=out, runs=args.runs, layout=args.layout, rate=args.rate,
                                          errors_per_run=args.errors_per_run, seed=args.seed, jobs=jobs))
            results[jobs] = (time.perf_counter() - t0, res)
            if jobs == 1:
                cpu1 = time.process_time() - c0
        floor = _rewrite(tmp / "jobs1", tmp / "floor")
        secs1, res = results[1]
        secs2, _ = results[2]
        mb = res.bytes / 1e6
        print(f"dataset: {args.runs} {args.layout} runs, {res.files} service logs, {res.lines:,} lines, {mb:.1f} MB")
        print(f"generate jobs=1: {secs1:6.2f} s  {res.lines / secs1:>10,.0f} lines/s  {mb / secs1:6.1f} MB/s"
              f"  (CPU {cpu1:.2f} s = {res.lines / cpu1:,.0f} lines per CPU second; the rest is I/O and other load)")
        print(f"generate jobs=2: {secs2:6.2f} s  {res.lines / secs2:>10,.0f} lines/s  {mb / secs2:6.1f} MB/s")
        print(f"baseline (same bytes, one write per file): {floor:6.2f} s  {mb / floor:6.1f} MB/s")
        print(f"ratio generate/baseline: jobs=1 {secs1 / floor:.1f}x, jobs=2 {secs2 / floor:.1f}x; "
              f"jobs=2 speed-up {secs1 / secs2:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
