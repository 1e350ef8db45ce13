"""Benchmark: our LO2 loader vs LogLead's own ``LO2Loader`` on the same generated v2 files.

Prints lines/s and peak RSS of

* ours on R runs and on 2R runs (peak RSS must stay flat when the run count doubles), and
* LogLead's ``LO2Loader`` (PyPI ``loglead``) on the same R runs,

and the ratios, all measured in this one invocation.  Each measurement runs in a fresh child process
so that its peak RSS (``ru_maxrss``) is its own.  LogLead pins ``polars<2``, so it lives in a separate
venv under ``settings.cache_dir`` that this script creates on first use (``pip install loglead``).

Fairness: both loaders read the same service logs (a root holding exactly those R runs, so LogLead's
unsorted ``os.listdir`` walk cannot pick others), all 54 test cases per run, no start-up trimming
(LogLead 2.0.0 has none), both build events and per-file sequences; ours also writes both Parquets.
The figure of merit is raw lines in those files per wall-clock second.

Wall-clock lines/s depend on what else the machine runs; lines per CPU-second (user+sys of the
process, all threads) are the steadier figure on a shared machine, so both are printed.

With the compiled tokenizer (batch._native) in use, our Polars path is measured on the R runs too
(same invocation, ``--skip-polars`` to leave it out), so the native/Polars ratio is a same-run A/B.

Usage:  .venv/bin/python bench/loader.py [--runs 20] [--skip-loglead] [--data DIR] [--engine auto|native|polars]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loglead_env import loglead_python, run_child  # noqa: E402
from shared.catalog import ERROR_CASE_NAMES  # noqa: E402
from shared.parsing import SERVICES  # noqa: E402
from shared.settings import Settings  # noqa: E402

# --------------------------------------------------------------------------------------------
# Dataset: `lo2 generate` when it exists, else a simple built-in v2 writer
# --------------------------------------------------------------------------------------------

_TEMPLATES = [
    ("XNIO-1 task-{t}", True, "DEBUG", "c.n.openapi.ApiNormalisedPath", "<init>", "normalised = /oauth2/token"),
    ("XNIO-1 task-{t}", True, "DEBUG", "c.n.openapi.ApiNormalisedPath", "<init>", "path = /oauth2/token, base path is set to: null"),
    ("XNIO-1 task-{t}", True, "DEBUG", "com.networknt.security.JwtIssuer", "getPrivateKey", "filename = primary.jks key = selfsigned"),
    ("XNIO-1 task-{t}", True, "INFO", "com.networknt.config.Config", "getConfigStream", "Config loaded from externalized folder for primary.jks in /config"),
    ("XNIO-1 task-{t}", True, "DEBUG", "c.n.o.t.h.Oauth2TokenPostHandler", "handleClientCredentials", "scope = null"),
    ("XNIO-1 task-{t}", True, "DEBUG", "com.networknt.schema.TypeValidator", "debug", 'validate( "Basic {b}", "Basic {b}", authorization)'),
    ("hz._hzInstance_1_dev.partition-operation.thread-{t}", False, "DEBUG", "c.n.oauth.cache.ClientMapStore", "load", "Load:{u}"),
]
_STACK = [
    'com.networknt.exception.ApiException: {{"statusCode":404,"code":"ERR12029","message":"REFRESH_TOKEN_NOT_FOUND"}}',
    "\tat com.networknt.oauth.token.handler.Oauth2TokenPostHandler.handleRefreshToken(Oauth2TokenPostHandler.java:401)",
    "\tat com.networknt.oauth.token.handler.Oauth2TokenPostHandler.handleRequest(Oauth2TokenPostHandler.java:120)",
    "\tat io.undertow.server.Connectors.executeRootHandler(Connectors.java:376)",
]


def _cid(rng: random.Random) -> str:
    return "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", k=22))


def _write_log(path: Path, rng: random.Random, start_ms: int, n: int) -> None:
    out = []
    t = start_ms
    for _ in range(n):
        t = (t + rng.randint(0, 40)) % 86_400_000
        h, rem = divmod(t, 3_600_000)
        m, rem = divmod(rem, 60_000)
        s, ms = divmod(rem, 1000)
        thread, has_cid, level, logger, method, msg = rng.choice(_TEMPLATES)
        thread = thread.format(t=rng.randint(1, 16))
        msg = msg.format(b=_cid(rng), u=rng.getrandbits(32))
        cid = f" {_cid(rng)}" if has_cid else " "
        if rng.random() < 0.02:
            level, method, msg = "ERROR", "handleRequest", "ApiException"
        out.append(f"{h:02d}:{m:02d}:{s:02d}.{ms:03d} [{thread}] {cid} {level:<5} {logger} {method} - {msg}")
        if level == "ERROR":
            out.extend(_STACK)
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def builtin_generate(out: Path, runs: int, lines_per_file: int, seed: int) -> None:
    """R v2 runs (``LO2_run_<epoch>``), 54 test cases x 7 services, ~``lines_per_file`` events each."""
    rng = random.Random(seed)
    epoch = 1_739_743_201
    for r in range(runs):
        run_dir = out / f"LO2_run_{epoch + r * 7200}"
        for case in ("correct", *ERROR_CASE_NAMES):
            case_dir = run_dir / case
            case_dir.mkdir(parents=True, exist_ok=True)
            start = ((epoch + r * 7200) % 86_400) * 1000
            for svc in SERVICES:
                n = max(1, int(lines_per_file * rng.uniform(0.5, 1.5)))
                _write_log(case_dir / f"light-oauth2-oauth2-{svc}-1.log", rng, start, n)


def make_dataset(base: Path, runs: int, lines_per_file: int, seed: int) -> tuple[Path, Path]:
    """A root with ``2*runs`` v2 runs (``lo2 generate``) and a root of symlinks to its first ``runs``."""
    full = base / "full"
    if not full.exists():
        t0 = time.perf_counter()
        try:
            from batch.generate import GenerateConfig, generate
        except ImportError:  # an older checkout without the generator
            builtin_generate(full, 2 * runs, lines_per_file, seed)
            how = "built-in writer"
        else:
            generate(GenerateConfig(out=full, runs=2 * runs, layout="v2", seed=seed))
            how = "lo2 generate"
        print(f"generated {2 * runs} v2 runs ({how}) in {time.perf_counter() - t0:.1f}s under {full}")
    half = base / "half"
    shutil.rmtree(half, ignore_errors=True)
    half.mkdir()
    run_dirs = sorted((p for p in full.iterdir() if p.is_dir()), key=lambda p: p.name)
    for run in run_dirs[:runs]:
        (half / run.name).symlink_to(run, target_is_directory=True)
    return full, half


# --------------------------------------------------------------------------------------------
# Children (each measured in its own process)
# --------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_ours(root: Path, out: Path, batch_mb: int, engine: str) -> dict[str, float]:
    from batch.loader import load_runs, make_selection

    t0, c0 = time.perf_counter(), time.process_time()
    s = load_runs(root, make_selection(trim_mode="none"), out, batch_bytes=batch_mb << 20, engine=engine)  # type: ignore[arg-type]
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "lines": s.lines,
            "events": s.events_written, "peak_rss_mb": _peak_rss_mb()}


_LOGLEAD_CHILD = r"""
import json, resource, sys, time, logging
logging.disable(logging.WARNING)
from loglead.loaders import LO2Loader
root, n = sys.argv[1], int(sys.argv[2])
t0, c0 = time.perf_counter(), time.process_time()
loader = LO2Loader(root, n_runs=n, errors_per_run=53, dup_errors=True)
loader.execute()
dt, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({"seconds": dt, "cpu_seconds": cpu, "events": loader.df.height, "sequences": loader.df_seq.height,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""






def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="runs R (ours is also measured on 2R)")
    ap.add_argument("--lines-per-file", type=int, default=400,
                    help="mean events per service log (only for the built-in writer, without lo2 generate)")
    ap.add_argument("--batch-mb", type=int, default=None, help="loader batch size (default: setting)")
    ap.add_argument("--data", type=Path, default=None, help="dataset folder (kept; default: a temp dir)")
    ap.add_argument("--seed", type=int, default=7, help="dataset seed")
    ap.add_argument("--skip-loglead", action="store_true", help="measure only our loader")
    ap.add_argument("--engine", choices=["auto", "native", "polars"], default=None,
                    help="our parser (default: setting loader_engine)")
    ap.add_argument("--skip-polars", action="store_true",
                    help="do not also measure our Polars path on R runs (measured when the native one is used)")
    ap.add_argument("--child", choices=["ours"], help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    settings = Settings()
    batch_mb = args.batch_mb or settings.loader_batch_mb
    engine = args.engine or settings.loader_engine
    if args.child == "ours":
        print(json.dumps(child_ours(args.root, args.out, batch_mb, engine)))
        return 0
    from batch import native

    path = native.resolve(engine)

    tmp = None
    if args.data is None:
        tmp = tempfile.mkdtemp(prefix="lo2-bench-loader-")
        args.data = Path(tmp)
    try:
        full, half = make_dataset(args.data, args.runs, args.lines_per_file, args.seed)
        size_mb = sum(f.stat().st_size for run in half.iterdir() for f in run.resolve().rglob("*oauth2-oauth2-*.log")) / 1e6
        me = [sys.executable, str(Path(__file__).resolve()), "--child", "ours", "--batch-mb", str(batch_mb)]
        ours_r = run_child([*me, "--engine", path, "--root", str(half), "--out", str(args.data / "out_half")])
        ours_2r = run_child([*me, "--engine", path, "--root", str(full), "--out", str(args.data / "out_full")])
        rows = [(f"ours ({path}), {args.runs} runs", ours_r, ours_r["lines"]),
                (f"ours ({path}), {2 * args.runs} runs", ours_2r, ours_2r["lines"])]
        if path == "native" and not args.skip_polars:
            pol = run_child([*me, "--engine", "polars", "--root", str(half), "--out", str(args.data / "out_polars")])
            rows.append((f"ours (polars), {args.runs} runs", pol, pol["lines"]))
        ll = None
        if not args.skip_loglead:
            py = loglead_python(settings, "loglead.loaders")
            script = args.data / "loglead_child.py"
            script.write_text(_LOGLEAD_CHILD, encoding="utf-8")
            ll = run_child([str(py), str(script), str(half), str(args.runs)])
            rows.append((f"LogLead LO2Loader, {args.runs} runs", ll, ours_r["lines"]))
        print(f"\ndataset: {args.runs} v2 runs x 54 test cases x 7 services, {ours_r['lines']:,} lines, {size_mb:,.0f} MB"
              f"  (batch {batch_mb} MB, {os.cpu_count()} cores)")
        print(f"{'loader':<34}{'wall s':>8}{'lines/s':>12}{'CPU s':>8}{'lines/CPU-s':>13}{'events':>12}{'peak RSS MB':>13}")
        for name, r, lines in rows:
            print(f"{name:<34}{r['seconds']:>8.2f}{lines / r['seconds']:>12,.0f}{r['cpu_seconds']:>8.2f}"
                  f"{lines / r['cpu_seconds']:>13,.0f}{int(r['events']):>12,}{r['peak_rss_mb']:>13,.0f}")
        rss_ratio = ours_2r["peak_rss_mb"] / ours_r["peak_rss_mb"]
        print(f"\npeak RSS ours {2 * args.runs} runs / {args.runs} runs: {rss_ratio:.2f}x (flat = ~1.0)")
        if ll is not None:
            print(f"lines/s ours / LogLead: {ll['seconds'] / ours_r['seconds']:.1f}x wall-clock, "
                  f"{ll['cpu_seconds'] / ours_r['cpu_seconds']:.1f}x per CPU-second (goal >= 10x); "
                  f"peak RSS ours / LogLead: {ours_r['peak_rss_mb'] / ll['peak_rss_mb']:.2f}x")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
