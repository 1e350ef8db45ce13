"""Records on the wire (shared/records.py): schemas in schemas/ match the models, ids are deterministic."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from shared.records import (
    SCHEMA_MODELS,
    AnomalyRecord,
    DlqRecord,
    Explanation,
    ModelRef,
    ScoreRecord,
    SequenceKey,
    TopFeature,
    json_schema,
    sequence_record_id,
)
from shared.settings import PROJECT_ROOT

SCHEMAS = PROJECT_ROOT / "schemas"
T0 = datetime(2025, 2, 16, 22, 0, 1, tzinfo=UTC)


def _anomaly(**over: object) -> AnomalyRecord:
    key = SequenceKey(policy="file", service="token", run="LO2_run_1739743201", test_case="correct")
    fields: dict[str, object] = dict(
        id=sequence_record_id("v1", key, 1739743201000), service="token", sequence=key, start=T0, end=T0,
        event_count=12, score=0.71, threshold=0.6, model=ModelRef(name="isolation_forest", version="v1"),
        closed_by="end_marker", detected_at=T0,
        explanation=Explanation(method="deviation", top_features=[TopFeature(name="ERROR count", value=3, normal_low=0, normal_high=0, contribution=4.2)],
                                evidence=["16:29:40.148 [t]  c ERROR x y - Basic ***"]),
    )
    fields.update(over)
    return AnomalyRecord.model_validate(fields)


@pytest.mark.parametrize("name", sorted(SCHEMA_MODELS))
def test_schema_files_are_generated_from_the_models(name: str) -> None:
    path = SCHEMAS / name
    assert path.is_file(), f"{path} missing: run `python -m shared.records`"
    assert json.loads(path.read_text(encoding="utf-8")) == json_schema(SCHEMA_MODELS[name]), (
        f"{path} is stale: run `python -m shared.records`"
    )


@pytest.mark.parametrize("name", sorted(SCHEMA_MODELS))
def test_documented_examples_validate_against_the_schema(name: str) -> None:
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    for example in schema.get("examples", []):
        jsonschema.validate(example, schema)
        SCHEMA_MODELS[name].model_validate(example)


def test_anomaly_record_round_trips_as_json_and_matches_its_schema() -> None:
    rec = _anomaly()
    text = rec.model_dump_json()
    assert AnomalyRecord.model_validate_json(text) == rec
    jsonschema.validate(json.loads(text), json.loads((SCHEMAS / "anomaly-record.v1.json").read_text()))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**json.loads(text), "schema_version": 2}, json.loads((SCHEMAS / "anomaly-record.v1.json").read_text()))


def test_unknown_fields_and_bad_versions_are_refused() -> None:
    data = json.loads(_anomaly().model_dump_json())
    with pytest.raises(ValidationError):
        AnomalyRecord.model_validate({**data, "surprise": 1})
    with pytest.raises(ValidationError):
        AnomalyRecord.model_validate({**data, "schema_version": 2})
    with pytest.raises(ValidationError):
        ScoreRecord.model_validate(data)  # an anomaly record is not a score record


def test_record_id_is_deterministic_and_separates_what_differs() -> None:
    key = SequenceKey(policy="file", service="token", run="r", test_case="t")
    same = SequenceKey(policy="file", service="token", run="r", test_case="t")
    assert sequence_record_id("v1", key, 5) == sequence_record_id("v1", same, 5)
    ids = {
        sequence_record_id("v1", key, 5),
        sequence_record_id("v2", key, 5),
        sequence_record_id("v1", key, 6),
        sequence_record_id("v1", SequenceKey(policy="file", service="user", run="r", test_case="t"), 5),
        sequence_record_id("v1", SequenceKey(policy="window", service="token", window_start=T0), 5),
    }
    assert len(ids) == 5


def test_dlq_record_keeps_original_bytes() -> None:
    raw = b"\xff\xfe not utf8"
    rec = DlqRecord(reason="invalid_utf8", message="m", topic="lo2.logs", partition=1, offset=7,
                    value_b64=base64.b64encode(raw).decode(), preview="?", received_at=T0, worker="w")
    back = DlqRecord.model_validate_json(rec.model_dump_json())
    assert base64.b64decode(back.value_b64) == raw
    jsonschema.validate(json.loads(rec.model_dump_json()), json.loads(Path(SCHEMAS / "dlq-record.v1.json").read_text()))


def test_explanations_of_shared_explain_fit_the_record() -> None:
    """Contract between shared/explain.py (producer of explanations) and the anomaly record."""
    from shared import explain

    ex = explain.Explanation(
        method="deviation",
        top_features=[explain.TopFeature(name="ERROR share", feature="level:ERROR", value=0.2, normal_low=0.0, normal_high=0.01, contribution=3.0)],
        nearest_normal=explain.NearestNormal(seq_id="abc", distance=1.5, differing_features=[explain.DifferingFeature(name="x", value=1.0, normal_value=0.0)]),
        evidence=["line"],
    )
    rec = Explanation.model_validate(ex.model_dump())
    assert rec.top_features[0].feature == "level:ERROR" and rec.nearest_normal is not None
