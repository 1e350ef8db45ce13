"""Benchmark: how long the local Kafka broker takes to become ready, tuned vs. plain JVM.

Prints, per configuration, the median over N fresh state dirs of: storage format, broker start
(process launch to a Metadata answer), total, and stop; then the ratio tuned/baseline measured in
this same run.  Baseline = the JVM defaults (tiered JIT, G1, no class-data-sharing archive);
tuned = the project defaults (settings kafka_jvm_opts + kafka_cds).  The first tuned start writes
the CDS archives; it runs before the measured rounds and is reported separately.

    .venv/bin/python bench/broker_start.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from shared.settings import Settings
from worker import broker


def one_start(settings: Settings) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="lo2-bench-kafka-") as tmp:
        t0 = time.monotonic()
        with broker.local_kafka(settings, state_dir=Path(tmp)) as running:
            total = time.monotonic() - t0
            assert running.info is not None
            fmt, start = running.info.format_seconds or 0.0, running.info.start_seconds or 0.0
            t1 = time.monotonic()
        stop = time.monotonic() - t1
    return {"format": fmt, "start": start, "total": total, "stop": stop}


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh brokers per configuration")
    args = parser.parse_args()

    tuned = Settings()
    baseline = tuned.model_copy(update={"kafka_jvm_opts": "", "kafka_cds": False})
    broker.fetch_jars(tuned)
    lib = broker.jar_dir(tuned)
    cds_dir = lib.parent / "cds"
    had_cds = cds_dir.is_dir() and any(cds_dir.glob("*.jsa"))
    warm = one_start(tuned)  # creates the CDS archives if they do not exist yet
    print(
        f"warm-up tuned start (CDS archives {'reused' if had_cds else 'created'}): total {warm['total']:.2f} s, stop {warm['stop']:.2f} s"
    )

    results: dict[str, list[dict[str, float]]] = {"baseline": [], "tuned": []}
    for _ in range(args.rounds):  # interleaved, so machine load hits both alike
        results["baseline"].append(one_start(baseline))
        results["tuned"].append(one_start(tuned))

    print(f"\nKafka {tuned.kafka_version}, {args.rounds} fresh brokers each, medians in seconds")
    print(f"{'config':10} {'format':>8} {'start':>8} {'total':>8} {'stop':>8}")
    for name, runs in results.items():
        print(
            f"{name:10} "
            + " ".join(f"{median(runs, k):8.2f}" for k in ("format", "start", "total", "stop"))
        )
    for key in ("format", "start", "total"):
        ratio = median(results["tuned"], key) / median(results["baseline"], key)
        print(f"ratio tuned/baseline {key:6}: {ratio:.2f}")


if __name__ == "__main__":
    main()
