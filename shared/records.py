"""The records lo2-stream exchanges over Kafka: input envelopes, anomaly, score and dead-letter records.

They live in ``shared/`` because producers (``lo2 replay``), the worker, consumers (``lo2 tail``) and
the JSON Schemas in ``schemas/`` must agree on one definition.  Everything is JSON (never pickle):
``model_dump_json()`` out, ``model_validate_json()`` in.  Each output record carries
``schema_version`` so consumers can refuse what they do not understand, and a deterministic ``id``
(see :func:`sequence_record_id`) so a worker that re-emits after a crash does not create a second
alert: consumers de-duplicate on ``id``.

The input envelopes are documented here as pydantic models (their JSON Schemas are the published
contract); the worker decodes them with hand-written checks in ``worker/envelopes.py`` because the
hot path must stay cheap, and a unit test proves both agree.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Version of the anomaly/score/DLQ record layout; bump on any incompatible change.
RECORD_SCHEMA_VERSION: Literal[1] = 1

#: Maximum evidence lines carried by one anomaly record (they are redacted).
MAX_EVIDENCE_LINES = 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------------------------
# input envelopes (topic lo2.logs)
# ------------------------------------------------------------------------------------------------


class LineEnvelope(_Strict):
    """One log line of one service (the simplest producer form)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "service": "token",
                    "line": "16:29:40.148 [XNIO-1 task-1]  Ab3dE-1 DEBUG c.n.o.t.h.Oauth2TokenPostHandler handleRequest - grant_type = client_credentials",
                    "ts": 1719592180148,
                    "run": "LO2_run_1739743201",
                    "test_case": "correct",
                    "host": "node-1",
                }
            ]
        },
    )

    service: str = Field(description="Service short name (client, code, key, refresh-token, service, token, user) or a container/OTel name that contains it.")
    line: str = Field(description="The raw logback line (an event line, or a stack-trace continuation line).")
    ts: int | float | str | None = Field(
        default=None,
        description="Reference time for the line's date: epoch milliseconds or ISO-8601. Default: the run's epoch, else the Kafka record time.",
    )
    run: str | None = Field(default=None, description="Run folder name (LO2_run_<epoch>); part of the file-policy sequence key.")
    test_case: str | None = Field(default=None, description="Test-case folder name; part of the file-policy sequence key (never a feature).")
    host: str | None = Field(default=None, description="Host that shipped the line (informational).")


class BatchEnvelope(_Strict):
    """Many lines of one service in one record: the fast form (one JSON decode for many lines)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "service": "token",
                    "run": "LO2_run_1739743201",
                    "test_case": "correct",
                    "ts": 1739743201000,
                    "lines": [
                        "16:29:40.148 [XNIO-1 task-1]  Ab3dE-1 DEBUG c.n.o.t.h.Oauth2TokenPostHandler handleRequest - start",
                        "16:29:40.151 [XNIO-1 task-1]  Ab3dE-1 ERROR c.n.o.t.h.Oauth2TokenPostHandler handleRequest - failed",
                        "\tat com.networknt.oauth.token.handler.Oauth2TokenPostHandler.handleRequest(Oauth2TokenPostHandler.java:104)",
                    ],
                }
            ]
        },
    )

    service: str = Field(description="Service short name (as in LineEnvelope).")
    lines: list[str] = Field(description="Raw logback lines in order; continuation lines attach to the event before them.")
    ts: int | float | str | None = Field(default=None, description="Reference time (as in LineEnvelope).")
    run: str | None = Field(default=None, description="Run folder name.")
    test_case: str | None = Field(default=None, description="Test-case folder name.")
    host: str | None = Field(default=None, description="Host that shipped the lines.")


class EndMarker(_Strict):
    """End of one sequence (file policy): the replay sends one after the last line of each log file."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [{"end": True, "service": "token", "run": "LO2_run_1739743201", "test_case": "correct"}]
        },
    )

    end: Literal[True] = Field(description="Marks the end of the sequence (run, test_case, service).")
    service: str = Field(description="Service short name.")
    run: str | None = Field(default=None, description="Run folder name.")
    test_case: str | None = Field(default=None, description="Test-case folder name.")
    ts: int | float | str | None = Field(default=None, description="When the file ended (informational).")


# OTLP/JSON as the OpenTelemetry Collector's Kafka exporter writes it (encoding otlp_json).  Only
# the fields we read are modelled; everything else is allowed and ignored.
class _OtlpOpen(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class OtlpAnyValue(_OtlpOpen):
    stringValue: str | None = None  # noqa: N815 (OTLP field name)


class OtlpKeyValue(_OtlpOpen):
    key: str
    value: OtlpAnyValue


class OtlpResource(_OtlpOpen):
    attributes: list[OtlpKeyValue] = Field(default_factory=list)


class OtlpLogRecord(_OtlpOpen):
    timeUnixNano: str | int | None = None  # noqa: N815
    observedTimeUnixNano: str | int | None = None  # noqa: N815
    body: OtlpAnyValue
    attributes: list[OtlpKeyValue] = Field(default_factory=list)


class OtlpScopeLogs(_OtlpOpen):
    logRecords: list[OtlpLogRecord] = Field(default_factory=list)  # noqa: N815


class OtlpResourceLogs(_OtlpOpen):
    resource: OtlpResource = Field(default_factory=OtlpResource)
    scopeLogs: list[OtlpScopeLogs] = Field(default_factory=list)  # noqa: N815


class OtlpLogsData(_OtlpOpen):
    """OTLP/JSON ``LogsData``: service from resource attribute ``service.name``, the line from ``body.stringValue``.

    Resource attributes ``lo2.run`` and ``lo2.test_case`` (optional) fill the file-policy key.
    """

    model_config = ConfigDict(
        extra="allow",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "resourceLogs": [
                        {
                            "resource": {
                                "attributes": [
                                    {"key": "service.name", "value": {"stringValue": "oauth2-token-service"}}
                                ]
                            },
                            "scopeLogs": [
                                {
                                    "scope": {},
                                    "logRecords": [
                                        {
                                            "timeUnixNano": "1719592180148000000",
                                            "body": {
                                                "stringValue": "16:29:40.148 [XNIO-1 task-1]  Ab3dE-1 DEBUG c.n.o.t.h.Oauth2TokenPostHandler handleRequest - start"
                                            },
                                        }
                                    ],
                                }
                            ],
                        }
                    ]
                }
            ]
        },
    )

    resourceLogs: list[OtlpResourceLogs]  # noqa: N815


# ------------------------------------------------------------------------------------------------
# output records (topics lo2.anomalies, lo2.scores, lo2.dlq)
# ------------------------------------------------------------------------------------------------


class SequenceKey(_Strict):
    """Which events the sequence holds: (run, test case, service) or (service, window)."""

    policy: Literal["file", "window"] = Field(description="Sequence policy of the model bundle.")
    service: str = Field(description="Service short name.")
    run: str | None = Field(default=None, description="Run folder name (file policy).")
    test_case: str | None = Field(default=None, description="Test-case folder name (file policy).")
    window_start: datetime | None = Field(default=None, description="Start of the tumbling window (window policy).")
    window_end: datetime | None = Field(default=None, description="End of the tumbling window (window policy).")


class ModelRef(_Strict):
    name: str = Field(description="Model name in the bundle (e.g. isolation_forest).")
    version: str = Field(description="Bundle version (directory name / manifest version).")


class TopFeature(_Strict):
    """One feature that explains the anomaly (same shape as ``shared.explain.TopFeature``)."""

    name: str = Field(description="Readable feature name (template text, level count, ...), redacted.")
    feature: str | None = Field(default=None, description="Machine name of the feature (column of the feature matrix).")
    value: float = Field(description="The feature's value in this sequence.")
    normal_low: float = Field(description="Low quantile of the feature over training normals.")
    normal_high: float = Field(description="High quantile of the feature over training normals.")
    contribution: float = Field(description="Positive = pushes toward anomalous (units depend on `method`).")


class DifferingFeature(_Strict):
    name: str = Field(description="Readable feature name.")
    value: float = Field(description="Value in this sequence.")
    normal_value: float = Field(description="Value in the nearest normal sequence.")


class NearestNormal(_Strict):
    seq_id: str = Field(description="Label-free id of the closest normal training sequence.")
    distance: float = Field(description="Euclidean distance in the scaled feature space.")
    differing_features: list[DifferingFeature] = Field(default_factory=list)


class Explanation(_Strict):
    """Why the sequence was flagged (the JSON of ``shared.explain.Explanation``)."""

    method: str = Field(description="deviation, tree_shap, or reference_deviation (fallback without explainer state).")
    top_features: list[TopFeature] = Field(default_factory=list, description="Strongest contributions first.")
    nearest_normal: NearestNormal | None = Field(default=None, description="Closest normal sequence, when the bundle can tell.")
    evidence: list[str] = Field(
        default_factory=list,
        max_length=MAX_EVIDENCE_LINES,
        description="A few redacted lines of the sequence (those of the top templates first).",
    )


class ScoredSequence(_Strict):
    """Fields every scored-sequence record shares (anomaly and score records)."""

    schema_version: Literal[1] = Field(default=RECORD_SCHEMA_VERSION, description="Record layout version.")
    id: str = Field(description="Deterministic id: hash of model version + sequence key + window/start. De-duplicate on it.")
    service: str = Field(description="Service short name.")
    sequence: SequenceKey
    start: datetime = Field(description="Timestamp of the first event (UTC).")
    end: datetime = Field(description="Timestamp of the last event (UTC).")
    event_count: int = Field(ge=0, description="Events in the sequence.")
    score: float = Field(description="Anomaly score of the bundle's model (higher = more anomalous).")
    threshold: float = Field(description="Bundle threshold; score >= threshold is an anomaly.")
    model: ModelRef
    online_score: float | None = Field(default=None, description="River HalfSpaceTrees score (0..1), when enabled.")
    closed_by: Literal["end_marker", "idle", "window", "shutdown"] = Field(description="What closed the sequence.")


class AnomalyRecord(ScoredSequence):
    """One anomalous sequence with its explanation (topic ``lo2.anomalies``)."""

    type: Literal["lo2.anomaly"] = Field(default="lo2.anomaly", description="Record type.")
    explanation: Explanation
    detected_at: datetime = Field(description="When the worker scored the sequence (UTC).")


class ScoreRecord(ScoredSequence):
    """Every scored sequence (optional topic ``lo2.scores``): for parity checks and audits."""

    type: Literal["lo2.score"] = Field(default="lo2.score", description="Record type.")
    is_anomaly: bool = Field(description="score >= threshold.")
    scored_at: datetime = Field(description="When the worker scored the sequence (UTC).")


class DlqRecord(_Strict):
    """A record the worker could not use (topic ``lo2.dlq``): the original bytes and why."""

    schema_version: Literal[1] = Field(default=RECORD_SCHEMA_VERSION, description="Record layout version.")
    type: Literal["lo2.dlq"] = Field(default="lo2.dlq", description="Record type.")
    reason: str = Field(description="Machine-readable reason (not_json, wrong_type, unknown_service, unparsable_line, too_large, invalid_utf8, ...).")
    message: str = Field(description="Readable explanation (redacted).")
    topic: str = Field(description="Source topic.")
    partition: int = Field(description="Source partition.")
    offset: int = Field(description="Source offset.")
    line_index: int | None = Field(default=None, description="Index of the bad line inside a batch record, if only that line was bad.")
    key_b64: str | None = Field(default=None, description="Original key bytes, base64.")
    value_b64: str = Field(description="Original value bytes, base64 (the bad line only, when line_index is set; truncated to the DLQ size cap).")
    value_truncated: bool = Field(default=False, description="True when value_b64 holds only the first bytes of a huge value.")
    preview: str = Field(description="The first characters of the value as text, redacted, for people.")
    received_at: datetime = Field(description="When the worker saw the record (UTC).")
    worker: str = Field(description="Worker instance that dead-lettered it.")


def sequence_record_id(model_version: str, key: SequenceKey, start_ms: int) -> str:
    """Deterministic id of a scored sequence: the same sequence scored by the same model gets the same id.

    The sequence start is included so that an idle gap splitting one file into two sequences gives
    two ids, while a worker restarted from its changelog (same start) re-emits the same id.
    """
    window = key.window_start.isoformat() if key.window_start is not None else ""
    raw = "|".join([model_version, key.policy, key.run or "", key.test_case or "", key.service, window, str(start_ms)])
    return hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()


#: Schema files in ``schemas/`` and the model each is generated from.
SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "input-line.v1.json": LineEnvelope,
    "input-batch.v1.json": BatchEnvelope,
    "input-end-marker.v1.json": EndMarker,
    "input-otlp-logs.v1.json": OtlpLogsData,
    "anomaly-record.v1.json": AnomalyRecord,
    "score-record.v1.json": ScoreRecord,
    "dlq-record.v1.json": DlqRecord,
}


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a record model, with ``$id`` and ``$schema`` set."""
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def write_schemas(folder: Path) -> list[Path]:
    """(Re)generate ``schemas/*.json`` from the models; ``python -m shared.records [folder]``."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in SCHEMA_MODELS.items():
        path = folder / name
        path.write_text(json.dumps(json_schema(model), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover - developer tool
    import sys

    from shared.settings import PROJECT_ROOT

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROJECT_ROOT / "schemas"
    for p in write_schemas(target):
        sys.stdout.write(f"{p}\n")
