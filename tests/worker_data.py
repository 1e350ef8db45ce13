"""Small LO2-shaped data and a model bundle for the worker's tests (built from the real token sample).

Run folders are cut from the real token-service lines (never copied into the repo: written to a
tmp folder per session), with ERROR events, light-4j error codes and stack traces injected into the
error test case, so an IsolationForest trained on ``correct`` flags some sequences.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

ERROR_CASE = "access_token_client_secret_wrong_401"
RUNS = tuple(f"light-oauth2-data-{1719592986 + 100 * i}" for i in range(5))
SERVICES = ("token", "code", "user")
TRIM = 5

_STACK = (
    "com.networknt.exception.ApiException: {\"statusCode\":401,\"code\":\"ERR12007\",\"message\":\"UNAUTHORIZED_CLIENT\"}",
    "\tat com.networknt.oauth.token.handler.Oauth2TokenPostHandler.handleClientCredentials(Oauth2TokenPostHandler.java:255)",
    "\tat com.networknt.oauth.token.handler.Oauth2TokenPostHandler.handleRequest(Oauth2TokenPostHandler.java:104)",
)


def write_runs(root: Path, sample: Path, *, lines_per_file: int = 120, seed: int = 7) -> Path:
    """Write ``RUNS`` × (correct, ERROR_CASE) × ``SERVICES`` log files under ``root``; return ``root``."""
    lines = sample.read_text(encoding="utf-8").splitlines()
    rng = random.Random(seed)
    for run in RUNS:
        for case in ("correct", ERROR_CASE):
            for service in SERVICES:
                start = rng.randrange(0, len(lines) - lines_per_file - 1)
                part = list(lines[start : start + lines_per_file])
                if case == ERROR_CASE and service == "token":
                    out: list[str] = []
                    for i, line in enumerate(part):
                        out.append(line)
                        if i > TRIM + 5 and i % 4 == 0:
                            t = line[:12]
                            out.append(
                                f"{t} [XNIO-1 task-2]  Ab3dE-{i} ERROR c.n.o.t.h.Oauth2TokenPostHandler handleClientCredentials"
                                " - ERR12007 UNAUTHORIZED_CLIENT client secret is wrong"
                            )
                            out.extend(_STACK)
                    part = out
                folder = root / run / case
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"light-oauth2-oauth2-{service}-1.log").write_text("\n".join(part) + "\n", encoding="utf-8")
    return root


def load_events(root: Path, out_dir: Path, trim: int = TRIM) -> pl.DataFrame:
    """events.parquet of the runs, written by the batch loader (the reference the worker must match)."""
    from batch.loader import EVENTS_FILE, Selection, load_runs

    load_runs(root, Selection(trim_init_lines=trim), out_dir)
    return pl.read_parquet(out_dir / EVENTS_FILE)


def build_bundle(
    events: pl.DataFrame, model_dir: Path, name: str = "isolation_forest-test", *, seed: int = 3, policy: Any = None
) -> Path:
    """Train an IsolationForest on the sequences the error cases do not target and save a bundle (with explainer state)."""
    from shared.bundle import ModelBundle
    from shared.detectors import IsolationForestDetector
    from shared.explain import build_explainer_state_for_spec
    from shared.features import featurize_events, fit_feature_spec
    from shared.sequences import SequencePolicy

    policy = policy or SequencePolicy(kind="file", idle_gap_seconds=600.0)
    normal = events.filter(~pl.col("anomaly_service"))
    spec = fit_feature_spec(normal, min_support=2, top_templates=40, hash_dims=256, policy=policy)
    fm = featurize_events(events, spec)
    y = fm.meta.get_column("anomaly_service").to_numpy()
    det = IsolationForestDetector(seed=seed, n_estimators=50).fit(fm.X[~y])
    normal_scores = det.score(fm.X[~y])
    threshold = float(np.quantile(normal_scores, 0.7))  # low on purpose: tests need anomalies
    seq_ids = fm.meta.get_column("seq_id").to_list()
    state = build_explainer_state_for_spec(spec, fm.X[~y], [s for s, a in zip(seq_ids, y, strict=True) if not a])
    bundle = ModelBundle(
        model_key="isolation_forest",
        input_kind="numeric",
        detectors={"all": det},
        thresholds={"all": threshold},
        feature_spec=spec,
        feature_names=list(spec.feature_names),
        sequence_policy=policy.to_dict(),
        threshold_quantile=0.7,
        explainer_state=state,
    )
    return bundle.save(model_dir / name)


def batch_scores(events: pl.DataFrame, bundle_dir: Path) -> dict[tuple[str, str, str], float]:
    """(run, test_case, service) -> the bundle's score of that sequence, computed the batch way."""
    from shared import bundle as bundle_mod
    from shared.features import featurize_events

    b = bundle_mod.load(bundle_dir)
    fm = featurize_events(events, b.feature_spec)
    scores = bundle_mod.score(b, fm.X)
    keys = fm.meta.select("run", "test_case", "service").iter_rows()
    return {tuple(k): float(s) for k, s in zip(keys, scores, strict=True)}  # type: ignore[misc]
