"""The contract the live worker relies on: a saved bundle scores a sequence built line by line from
its raw log exactly as the batch path scored it, and explains it.

Chain: generated v2 runs -> ``batch.loader`` -> ``batch.train`` (bundles saved and reloaded) ->
for held-out test-run sequences, raw lines -> ``shared.parsing`` -> ``shared.sequences``
accumulators (the bundle's own encoder) -> ``shared.bundle.score_accumulators`` (vectorize +
``bundle_inputs`` + ``score``) -> ``shared.explain.explain_sequence``.  Nothing from ``batch/`` is
used on the live side, as the worker cannot import it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from shared import bundle as mb
from shared.parsing import (
    LineKind,
    classify,
    parse_line,
    resolve_timestamp_ms,
    service_from_filename,
)
from shared.sequences import Event, SequenceAccumulator, SequenceBuilder

#: One model per input kind the worker meets: aggregates (the promoted IF, with an appended canary
#: column as ``--if-numeric`` gives), all dense features, hashed tokens; plus a per-service model.
MODELS = ("if", "sequence_lr_numeric", "event_lr_words")
TRIM = 100


@pytest.fixture(scope="module")
def events_path(generated_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from batch.loader import EVENTS_FILE, load_runs, make_selection

    out = tmp_path_factory.mktemp("parity_events")
    load_runs(generated_v2, make_selection(seed=1, trim_init_lines=TRIM), out, write_sequences=False)
    return out / EVENTS_FILE


@pytest.fixture(scope="module")
def batch_side(events_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[mb.ModelBundle, pl.DataFrame]]:
    """Bundles as the worker loads them (saved, reloaded) and the batch scores of every sequence.

    The frame carries each sequence's batch input row (``x``) to compare the live rows with.
    """
    from batch.train import TrainConfig, inputs_of_bundle, predictions_frame, train

    events = pl.read_parquet(events_path)
    out = tmp_path_factory.mktemp("parity_models")
    pooled = train(events, TrainConfig(models=MODELS, seed=7, if_extra_columns=("n_events",),
                                       model_params={"if": {"n_estimators": 50}}))
    # services with `correct` logs in every split after the start-up trim of this small dataset
    per_service = train(events, TrainConfig(models=("hst",), seed=7, per_service=True,
                                            services=("client", "service", "token", "user")))
    found: dict[str, tuple[mb.ModelBundle, pl.DataFrame]] = {}
    for name, result in (("pooled", pooled), ("per_service", per_service)):
        for key, bundle in result.bundles.items():
            X = inputs_of_bundle(bundle, result.data.inputs, result.data.feature_names)
            dense = X.toarray() if hasattr(X, "toarray") else X
            frame = predictions_frame(result.data, bundle).with_columns(pl.Series("x", dense.tolist()))
            found[key] = (mb.load(bundle.save(out / f"{name}-{key}")), frame)
    return found


def live_accumulator(root: Path, run: str, test_case: str, service: str, bundle: mb.ModelBundle) -> SequenceAccumulator:
    """Read one service log like the worker: parse each line, fold events into the sequence builder."""
    folder = root / run / test_case
    path = next(p for p in folder.iterdir() if service_from_filename(p.name) == service)
    run_epoch_ms = int(run.rsplit("_", 1)[1]) * 1000
    builder = SequenceBuilder(bundle.feature_spec.policy, bundle.feature_spec.encoder())
    pending: dict[str, object] | None = None
    stack: list[str] = []
    n_events = 0

    def emit() -> None:
        if pending is not None and n_events > TRIM:
            assert not builder.add(Event(**pending, n_stack_lines=len(stack), stack="\n".join(stack) or None))  # type: ignore[arg-type]

    for line in path.read_text(encoding="utf-8").splitlines():
        kind = classify(line)
        if kind is LineKind.CONTINUATION and pending is not None:
            stack.append(line)
            continue
        parsed = parse_line(line) if kind is LineKind.EVENT else None
        if parsed is None:
            continue
        emit()
        n_events += 1
        stack = []
        pending = {
            "service": service, "run": run, "test_case": test_case,
            "timestamp_ms": resolve_timestamp_ms(parsed.time_of_day_ms, run_epoch_ms), "level": parsed.level,
            "logger": parsed.logger, "method": parsed.method, "message": parsed.message, "line_no": n_events,
        }
    emit()
    closed = builder.end(run, test_case, service)
    assert len(closed) == 1
    return closed[0].accumulator


def held_out(frame: pl.DataFrame, n: int = 6) -> pl.DataFrame:
    """Test-run sequences: the most and the least anomalous, so both alerts and normals are checked."""
    test = frame.filter(pl.col("split") == "test").sort("score", descending=True)
    return pl.concat([test.head(n // 2), test.tail(n - n // 2)])


@pytest.mark.parametrize("key", [*MODELS, "hst"])
def test_live_score_equals_batch_score_and_explains(
    key: str, batch_side: dict[str, tuple[mb.ModelBundle, pl.DataFrame]], generated_v2: Path
) -> None:
    from shared.explain import explain_sequence

    bundle, frame = batch_side[key]
    rows = held_out(frame)
    accs = [live_accumulator(generated_v2, r["run"], r["test_case"], r["service"], bundle) for r in rows.iter_rows(named=True)]
    assert [a.seq_id for a in accs] == rows["seq_id"].to_list()
    assert [a.n_events for a in accs] == rows["n_events"].to_list()

    result = mb.score_accumulators(bundle, accs)
    live_x = result.X.toarray() if hasattr(result.X, "toarray") else result.X
    np.testing.assert_array_equal(live_x, np.array(rows["x"].to_list()))  # the same input columns, bit for bit
    if key in ("if", "hst"):  # trees only compare: identical rows give identical scores
        np.testing.assert_array_equal(result.scores, rows["score"].to_numpy())
    else:  # a linear model's dot product may round differently in a 6-row than an 800-row BLAS call
        np.testing.assert_allclose(result.scores, rows["score"].to_numpy(), rtol=1e-12, atol=0)
    np.testing.assert_array_equal(result.thresholds, rows["threshold"].to_numpy())
    np.testing.assert_array_equal(result.alerts, rows["alert"].to_numpy())
    assert result.alerts.any(), "the most anomalous held-out sequences should alert"

    for i, acc in enumerate(accs):
        explanation = explain_sequence(bundle, result.X[i], acc.evidence, top_k=3, service=result.services[i])
        assert len(explanation.top_features) == 3
        assert explanation.nearest_normal is not None
        assert explanation.evidence and len(explanation.evidence) <= 5


def test_evidence_follows_the_template_of_a_top_feature(
    batch_side: dict[str, tuple[mb.ModelBundle, pl.DataFrame]], generated_v2: Path
) -> None:
    # The numeric model sees per-template shares; when one of them is a top feature, its evidence
    # line is picked by template id (the accumulator keeps template_id with each line).
    from shared.explain import explain_sequence, select_evidence

    bundle, frame = batch_side["sequence_lr_numeric"]
    rows = held_out(frame, n=10)
    accs = [live_accumulator(generated_v2, r["run"], r["test_case"], r["service"], bundle) for r in rows.iter_rows(named=True)]
    X = mb.accumulator_inputs(bundle, accs)
    state = bundle.explainer_state
    assert state is not None
    checked = 0
    for i, acc in enumerate(accs):
        explanation = explain_sequence(bundle, X[i], acc.evidence, top_k=5, method="deviation")
        kept = {str(e["template_id"]) for e in acc.evidence}
        for feature in explanation.top_features:
            tid = state.feature_templates[state.feature_names.index(feature.feature)]
            if tid is not None and tid in kept:
                first_line_of_template = select_evidence(acc.evidence, [(tid, "")], 1)
                assert first_line_of_template[0] in explanation.evidence, (feature.name, explanation.evidence)
                checked += 1
    assert checked, "no held-out sequence kept a line of a top template: the check did not run"
