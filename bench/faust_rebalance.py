"""Benchmark: how fast Faust group membership changes settle, Faust defaults vs. FAST_FAUST_SETTINGS.

Against a fresh local broker: app A (a table, 2 input partitions) runs alone; app B with the same
id joins (measured: B.start() until A and B hold one input partition each); then A leaves
(measured: A.stop() until B holds both).  Prints medians over N rounds for Faust's defaults (the
baseline, measured in this same run) and for tests/plugins/kafka.py::FAST_FAUST_SETTINGS, and
the ratios.

    .venv/bin/python bench/faust_rebalance.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust

from shared.settings import Settings
from worker import broker
from worker.topics import ensure_topics

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ is not an installed package
from tests.plugins.kafka import FAST_FAUST_SETTINGS  # noqa: E402

BASELINE: dict[str, Any] = {
    "store": "memory://",
    "web_enabled": False,
    "topic_replication_factor": 1,
}


def make_app(app_id: str, bootstrap: str, src: str, settings: dict[str, Any], datadir: Path) -> faust.App:
    # an explicit datadir: Faust's default is "<app id>-data" in the working directory (the checkout)
    app = faust.App(app_id, broker=f"kafka://{bootstrap}", datadir=str(datadir),
                    **{**settings, "topic_partitions": 2})
    topic = app.topic(src, key_serializer="raw", value_serializer="raw")
    counts = app.Table("counts", default=int, partitions=2)

    @app.agent(topic)
    async def count(stream: Any) -> None:
        async for key, _value in stream.items():
            counts[key] += 1

    return app


def inputs_of(app: faust.App, src: str) -> int:
    return sum(1 for tp in app.consumer.assignment() if tp.topic == src)


async def settle(cond: Callable[[], bool], timeout: float = 120.0) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("group did not settle")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


async def one_round(bootstrap: str, settings: dict[str, Any]) -> dict[str, float]:
    sfx = uuid.uuid4().hex[:8]
    src = f"bench-in-{sfx}"
    await ensure_topics(bootstrap, [src], partitions=2)
    with tempfile.TemporaryDirectory(prefix="lo2-bench-faust-apps-") as apps:
        a = make_app(f"bench-{sfx}", bootstrap, src, settings, Path(apps) / "a")
        b = make_app(f"bench-{sfx}", bootstrap, src, settings, Path(apps) / "b")
        t0 = time.monotonic()
        await a.start()
        await settle(lambda: inputs_of(a, src) == 2)
        alone = time.monotonic() - t0
        t1 = time.monotonic()
        await b.start()
        await settle(lambda: inputs_of(a, src) == 1 and inputs_of(b, src) == 1)
        join = time.monotonic() - t1
        t2 = time.monotonic()
        await a.stop()
        await settle(lambda: inputs_of(b, src) == 2)
        leave = time.monotonic() - t2
        await b.stop()
    return {"first member": alone, "second joins": join, "first leaves": leave}


async def run(bootstrap: str, rounds: int) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {"faust defaults": [], "fast settings": []}
    for _ in range(rounds):
        results["faust defaults"].append(await one_round(bootstrap, BASELINE))
        results["fast settings"].append(await one_round(bootstrap, FAST_FAUST_SETTINGS))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per configuration")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    settings = Settings()
    with tempfile.TemporaryDirectory(prefix="lo2-bench-faust-") as tmp:
        with broker.local_kafka(settings, state_dir=Path(tmp)) as running:
            assert running.bootstrap is not None
            results = asyncio.run(run(running.bootstrap, args.rounds))
    keys = ("first member", "second joins", "first leaves")
    print(f"\nFaust group changes, {args.rounds} rounds each, medians in seconds")
    print(f"{'config':16}" + "".join(f"{k:>14}" for k in keys))
    for name, runs in results.items():
        print(
            f"{name:16}" + "".join(f"{statistics.median(r[k] for r in runs):14.2f}" for k in keys)
        )
    for k in keys:
        base = statistics.median(r[k] for r in results["faust defaults"])
        fast = statistics.median(r[k] for r in results["fast settings"])
        print(f"ratio fast/defaults {k:13}: {fast / base:.2f}")


if __name__ == "__main__":
    main()
