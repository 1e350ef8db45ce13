"""Writing runs to disk in the real LO2 layout, and the ground-truth file next to them.

Layout (reference §1.2/§1.3)::

    <out>/ground_truth.json
    <out>/LO2_run_<epoch>/<test_case>/light-oauth2-oauth2-<service>-1.log      (v2)
    <out>/light-oauth2-data-<epoch>/<test_case>/light-oauth2-oauth2-<service>-1.log  (v1)

plus, per test case, the empty logs of the non-service containers that ``docker logs`` wrote too
(``jaeger-container.log``, ``light-oauth2-mysqldb-1.log``, …) so loaders meet them as in real data.
Each log is written with one ``join`` and one buffered write.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from batch.generator.schedule import RunPlan
from batch.generator.simulate import TestOutput
from shared.catalog import ERROR_CASES, target_service

GROUND_TRUTH = "ground_truth.json"
SCHEMA_VERSION = 1
AUX_LOGS = ("jaeger-container.log", "light-oauth2-mysqldb-1.log", "light-oauth2-node_exporter-1.log",
            "light-oauth2-prometheus-1.log")


def log_name(service: str) -> str:
    return f"light-oauth2-oauth2-{service}-1.log"


def iso_ms(t_ms: int) -> str:
    return datetime.fromtimestamp(t_ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_test(run_dir: Path, out: TestOutput, *, aux_files: bool) -> dict[str, int]:
    """Write one test-case folder; return the number of physical lines per service log."""
    folder = run_dir / out.slot.test_case
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for svc, lines in out.logs.items():
        text = "\n".join(lines)
        if lines:
            text += "\n"
        (folder / log_name(svc)).write_text(text, encoding="utf-8")
        counts[svc] = text.count("\n")
    if aux_files:
        for name in AUX_LOGS:
            (folder / name).touch()
    return counts


def run_summary(plan: RunPlan, counts: list[dict[str, int]]) -> dict[str, Any]:
    """The ground-truth entry of one run (schedule, targets, line counts)."""
    return {
        "run": plan.name,
        "epoch": plan.epoch,
        "start": iso_ms(plan.start_ms),
        "end": iso_ms(plan.end_ms),
        "crosses_midnight": plan.crosses_midnight,
        "tests": [
            {
                "test_case": slot.test_case,
                "start": iso_ms(slot.start_ms),
                "end": iso_ms(slot.end_ms),
                "start_ms": slot.start_ms,
                "end_ms": slot.end_ms,
                "crosses_midnight": slot.start_ms // 86_400_000 != (slot.end_ms - 1) // 86_400_000,
                "target_service": target_service(slot.test_case),
                "lines": c,
            }
            for slot, c in zip(plan.tests, counts, strict=True)
        ],
    }


def ground_truth(*, layout: str, seed: int, rate: float, services: tuple[str, ...],
                 runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole ``ground_truth.json`` document (schema in docs/generator.md)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "generator": "lo2-stream batch.generate",
        "layout": layout,
        "seed": seed,
        "rate": rate,
        "services": list(services),
        # test case -> the service its error shows in (read by batch.loader for anomaly_service)
        "targets": {c.name: c.service for c in ERROR_CASES},
        "error_cases": {
            c.name: {
                "service": c.service,
                "http_status": c.http_status,
                "expected_status": c.expected_status,
                "code": c.code,
                "message": c.error_message,
                "description": c.status.description,
                "request": c.request,
                "locust_user": c.locust_user,
                "observed": c.observed,
            }
            for c in ERROR_CASES
        },
        "runs": runs,
    }


def write_ground_truth(out: Path, doc: dict[str, Any]) -> Path:
    path = out / GROUND_TRUTH
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
