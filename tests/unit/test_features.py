"""Featurization: batch (Polars) and incremental (builder + accumulator) give identical vectors.

The events are made the way the loader and the worker make them: LO2-like raw lines (generated
below, with random ids, thread names, correlation ids and stack traces) parsed with shared.parsing.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from shared.errors import DataLayoutError, ModelLoadError
from shared.features import (
    CANARY_FEATURES,
    EventEncoder,
    FeatureMatrix,
    FeatureSpec,
    accumulators_meta,
    canary_features,
    feature_options,
    featurize_events,
    fit_feature_spec,
    vectorize,
    vectorize_many,
    vectorize_tokens,
    vectorize_tokens_many,
)
from shared.parsing import LineKind, classify, file_seq_id, parse_line, resolve_timestamp_ms
from shared.sequences import Event, SequenceAccumulator, SequenceBuilder, SequencePolicy
from shared.settings import Settings

RUN_EPOCHS = {"LO2_run_1739743201": 1_739_743_201, "LO2_run_1739829601": 1_739_829_601,
              "LO2_run_1739916001": 1_739_916_001}
ERROR_CASE = "access_token_client_secret_wrong_401"  # targets the token service
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


# --------------------------------------------------------------------------------------------------
# A small LO2-like generator (raw lines -> shared.parsing -> events contract)
# --------------------------------------------------------------------------------------------------
def _cid(rng: random.Random) -> str:
    return "".join(rng.choice(B64) for _ in range(22))


def _line(t_ms: int, thread: str, cid: str, level: str, logger: str, method: str, msg: str) -> str:
    s, ms = divmod(t_ms % 86_400_000, 1000)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{sec:02d}.{ms:03d} [{thread}]  {cid} {level:<5} {logger} {method} - {msg}"


def _status(code: str, http: int, msg: str, desc: str) -> str:
    return json.dumps({"statusCode": http, "code": code, "message": msg, "description": desc, "severity": "ERROR"},
                      separators=(",", ":"))


def service_lines(rng: random.Random, service: str, test_case: str, start_ms: int, n_req: int) -> list[str]:
    lines: list[str] = []
    t = start_ms
    for _ in range(n_req):
        t += rng.randint(5, 60)
        th, cid = f"XNIO-1 task-{rng.randint(1, 8)}", _cid(rng)
        hz = f"hz._hzInstance_1_dev.partition-operation.thread-{rng.randint(1, 16)}"
        if service == "token":
            lines.append(_line(t, th, cid, "DEBUG", "c.n.openapi.ApiNormalisedPath", "<init>", "normalised = /oauth2/token"))
            secret = base64.b64encode(f"{uuid.UUID(int=rng.getrandbits(128))}:{_cid(rng)}".encode()).decode()
            lines.append(_line(t + 1, th, cid, "DEBUG", "com.networknt.schema.TypeValidator", "debug",
                               f'validate( "Basic {secret}", "Basic {secret}", authorization)'))
            r = rng.random()
            if r < 0.4:
                lines.append(_line(t + 2, th, cid, "DEBUG", "c.n.o.t.h.Oauth2TokenPostHandler", "handleAuthorizationCode",
                                   f"code = {_cid(rng)} redirectUri = http://localhost:8080/authorization"))
            elif r < 0.7:
                lines.append(_line(t + 2, th, cid, "DEBUG", "c.n.o.t.h.Oauth2TokenPostHandler", "handleRefreshToken",
                                   f"refreshToken = {uuid.UUID(int=rng.getrandbits(128))} scope = null"))
                lines.append(_line(t + 3, hz, "", "DEBUG", "c.n.oauth.cache.RefreshTokenMapStore", "load",
                                   f"Load:{uuid.UUID(int=rng.getrandbits(128))}"))
            else:
                lines.append(_line(t + 2, th, cid, "DEBUG", "c.n.o.t.h.Oauth2TokenPostHandler", "handleClientCredentials",
                                   "scope = null"))
            lines.append(_line(t + 4, th, cid, "DEBUG", "com.networknt.security.JwtIssuer", "getPrivateKey",
                               "filename = primary.jks key = selfsigned"))
            if test_case == ERROR_CASE and rng.random() < 0.5:
                lines.append(_line(t + 5, th, cid, "ERROR", "c.n.o.t.h.Oauth2TokenPostHandler", "handleRequest",
                                   "ApiException"))
                lines.append("com.networknt.exception.ApiException: " + _status(
                    "ERR12007", 401, "UNAUTHORIZED_CLIENT", "Unauthorized client with wrong client secret."))
                lines.append("\tat com.networknt.oauth.token.handler.Oauth2TokenPostHandler.handleRequest(Oauth2TokenPostHandler.java:83)")
                lines.append("\tat io.undertow.server.Connectors.executeRootHandler(Connectors.java:387)")
        else:  # user
            uid = f"user{rng.randint(0, 10_000)}"
            lines.append(_line(t, th, cid, "DEBUG", "c.n.openapi.ApiNormalisedPath", "<init>", "normalised = /oauth2/user"))
            body = json.dumps({"userId": uid, "password": _cid(rng), "email": f"{uid}@example.com"}, separators=(",", ":"))
            lines.append(_line(t + 1, th, cid, "DEBUG", "com.networknt.schema.RequiredValidator", "debug",
                               f"validate( {body}, {body}, requestBody)"))
            lines.append(_line(t + 2, hz, "", "DEBUG", "c.networknt.oauth.cache.UserMapStore", "store",
                               f"Store:{rng.getrandbits(32):08x}"))
        # the noise of real `correct` logs: an occasional ERROR with a stack, a WARN, a rare line
        if rng.random() < 0.04:
            lines.append(_line(t + 6, hz, "", "ERROR", "c.n.oauth.cache.ClientMapStore", "delete", "Exception:"))
            lines.append("java.lang.NullPointerException: null")
            lines.append("\tat com.networknt.oauth.cache.ClientMapStore.delete(ClientMapStore.java:71)")
        if rng.random() < 0.05:
            lines.append(_line(t + 7, th, cid, "WARN", "io.undertow.request", "handleRequest",
                               f"Slow request: {rng.randint(100, 999)} ms"))
        if rng.random() < 0.01:
            lines.append(_line(t + 8, th, cid, "INFO", "com.networknt.server.Server", "start", "server starts"))
    return lines


def parse_events(lines: list[str], run: str, test_case: str, service: str) -> list[dict[str, Any]]:
    ref = RUN_EPOCHS[run] * 1000
    rows: list[dict[str, Any]] = []
    stack: list[str] = []

    def close_stack() -> None:
        if rows and stack:
            rows[-1]["stack"] = "\n".join(stack)
            rows[-1]["n_stack_lines"] = len(stack)
        stack.clear()

    for no, line in enumerate(lines, 1):
        kind = classify(line)
        if kind is LineKind.CONTINUATION:
            stack.append(line)
            continue
        p = parse_line(line)
        if p is None:
            continue
        close_stack()
        rows.append({
            "run": run, "run_epoch": RUN_EPOCHS[run], "test_case": test_case, "service": service,
            "seq_id": file_seq_id(run, test_case, service), "line_no": no,
            "timestamp": resolve_timestamp_ms(p.time_of_day_ms, ref), "thread": p.thread,
            "correlation_id": p.correlation_id, "level": p.level, "logger": p.logger, "method": p.method,
            "message": p.message, "stack": None, "n_stack_lines": 0,
            "anomaly": test_case != "correct", "anomaly_service": test_case != "correct" and service == "token",
        })
    close_stack()
    return rows


SCHEMA = {
    "run": pl.String, "run_epoch": pl.Int64, "test_case": pl.String, "service": pl.String, "seq_id": pl.String,
    "line_no": pl.Int32, "timestamp": pl.Int64, "thread": pl.String, "correlation_id": pl.String,
    "level": pl.String, "logger": pl.String, "method": pl.String, "message": pl.String, "stack": pl.String,
    "n_stack_lines": pl.Int32, "anomaly": pl.Boolean, "anomaly_service": pl.Boolean,
}


def make_events(seed: int = 1, n_req: int = 120) -> pl.DataFrame:
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for run, epoch in RUN_EPOCHS.items():
        start = epoch * 1000 + 5_000
        for tc_i, tc in enumerate(("correct", ERROR_CASE)):
            for svc in ("token", "user"):
                n = n_req if tc == "correct" else n_req // 3  # error phases are shorter, like v1
                lines = service_lines(rng, svc, tc, start + tc_i * 600_000, n)
                rows += parse_events(lines, run, tc, svc)
    return pl.DataFrame(rows, schema=SCHEMA).with_columns(pl.col("timestamp").cast(pl.Datetime("ms", "UTC")))


def to_event(r: dict[str, Any]) -> Event:
    return Event(
        service=r["service"], run=r["run"], test_case=r["test_case"],
        timestamp_ms=int(r["timestamp"].timestamp() * 1000), level=r["level"], logger=r["logger"],
        method=r["method"], message=r["message"], n_stack_lines=r["n_stack_lines"], stack=r["stack"],
        line_no=r["line_no"],
    )


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    return make_events()


@pytest.fixture(scope="module")
def train_events(events: pl.DataFrame) -> pl.DataFrame:
    """Training data of the IsolationForest: `correct` of the first two runs only."""
    return events.filter((pl.col("test_case") == "correct") & (pl.col("run") != "LO2_run_1739916001"))


@pytest.fixture(scope="module")
def spec(train_events: pl.DataFrame) -> FeatureSpec:
    return fit_feature_spec(train_events, min_support=3, top_templates=50, hash_dims=512)


def run_incremental(events: pl.DataFrame, spec: FeatureSpec, *, checkpoint_every: int = 0) -> dict[str, SequenceAccumulator]:
    """Stream the events (time order, services interleaved) through the builder, as the worker does.

    With ``checkpoint_every``, the open accumulators go through their JSON form every N events,
    like a worker that restarts from its changelog table.
    """
    builder = SequenceBuilder(spec.policy, EventEncoder(spec))
    closed: dict[str, SequenceAccumulator] = {}
    ordered = events.sort("timestamp", "service", "line_no")
    for i, r in enumerate(ordered.iter_rows(named=True), 1):
        for c in builder.add(to_event(r)):
            assert c.seq_id not in closed
            closed[c.seq_id] = c.accumulator
        if checkpoint_every and i % checkpoint_every == 0:
            store = {k: SequenceAccumulator.from_json(v.to_json()) for k, v in builder.store.items()}
            stats = builder.stats
            builder = SequenceBuilder(spec.policy, EventEncoder(spec), store=store)
            builder.stats = stats
    for c in builder.flush():
        closed[c.seq_id] = c.accumulator
    assert builder.stats.late_events == 0
    return closed


def assert_parity(fm: FeatureMatrix, accs: dict[str, SequenceAccumulator], spec: FeatureSpec) -> None:
    assert set(accs) == set(fm.meta["seq_id"])
    ordered = [accs[s] for s in fm.meta["seq_id"]]
    assert np.array_equal(vectorize_many(ordered, spec), fm.X)  # the worker's micro-batch path
    assert (vectorize_tokens_many(ordered, spec) != fm.X_tokens).nnz == 0
    live_meta = accumulators_meta(ordered)
    assert np.array_equal(canary_features(live_meta)[0], canary_features(fm.meta)[0])
    for i, row in enumerate(fm.meta.iter_rows(named=True)):
        acc = accs[row["seq_id"]]
        v = vectorize(acc, spec)
        assert v.shape == (spec.n_features,)
        diff = np.flatnonzero(v != fm.X[i])
        assert diff.size == 0, [(fm.feature_names[j], v[j], fm.X[i, j]) for j in diff]
        tok = vectorize_tokens(acc, spec)
        assert (tok != fm.X_tokens[i]).nnz == 0
        assert acc.n_events == row["n_events"] and acc.duration_s == row["duration_s"]
        assert acc.n_stack_lines == row["n_stack_lines"]


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------
def test_batch_and_incremental_vectors_are_identical_file_policy(events: pl.DataFrame, spec: FeatureSpec) -> None:
    fm = featurize_events(events, spec)
    assert fm.n_sequences == 12 and fm.X.shape == (12, spec.n_features) and fm.X.dtype == np.float64
    # the worker loads the spec from the bundle (JSON) and keeps accumulators in a changelog (JSON)
    loaded = FeatureSpec.from_json(spec.to_json())
    assert_parity(fm, run_incremental(events, loaded, checkpoint_every=97), loaded)


def test_batch_and_incremental_vectors_are_identical_window_policy(events: pl.DataFrame, spec: FeatureSpec) -> None:
    wspec = replace(spec, policy=SequencePolicy("window", window_seconds=2, allowed_lateness_seconds=1))
    fm = featurize_events(events.lazy(), wspec)
    assert fm.n_sequences > 12
    assert fm.meta["window_start_ms"].null_count() == 0
    assert (fm.meta["window_start_ms"] % 2000 == 0).all()
    assert_parity(fm, run_incremental(events, wspec), wspec)


def test_meta_columns_and_labels(events: pl.DataFrame, spec: FeatureSpec) -> None:
    fm = featurize_events(events, spec)
    meta = fm.meta
    assert meta.columns == ["seq_id", "run", "run_epoch", "test_case", "service", "window_start_ms", "n_events",
                            "duration_s", "n_stack_lines", "anomaly", "anomaly_service"]
    by = {(r["run"], r["test_case"], r["service"]): r for r in meta.iter_rows(named=True)}
    r = by[("LO2_run_1739743201", ERROR_CASE, "token")]
    assert r["anomaly"] and r["anomaly_service"] and r["seq_id"] == file_seq_id(*("LO2_run_1739743201", ERROR_CASE, "token"))
    assert not by[("LO2_run_1739743201", ERROR_CASE, "user")]["anomaly_service"]
    counts = events.group_by("seq_id").len()
    assert dict(meta.select("seq_id", "n_events").iter_rows()) == dict(counts.iter_rows())
    assert meta["run_epoch"].is_sorted()


def test_feature_names_are_readable_and_bounded(spec: FeatureSpec) -> None:
    names = spec.feature_names
    assert len(set(names)) == len(names)
    assert "level:ERROR" in names and "err:ERR12007" in names and "share:unseen_template" in names
    assert "tpl:DEBUG Oauth2TokenPostHandler handleRefreshToken - refreshToken = <*> scope = null" in names
    assert "rate:error_code_events" in names and "share:rare_or_unseen_template" in names
    for forbidden in ("XNIO", "task-", "hz._", "LO2_run", "correct", ERROR_CASE, "thread"):
        assert not any(forbidden in n for n in names), forbidden
    groups = spec.feature_groups()
    assert set(groups) == {"tpl", "share", "level", "err", "rate"}
    assert sorted(j for idx in groups.values() for j in idx) == list(range(spec.n_features))
    assert [names[j] for j in groups["level"]] == [f"level:{lv}" for lv in ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")]
    small = fit_feature_spec(make_events(seed=5, n_req=40), top_templates=3, hash_dims=64)
    assert sum(n.startswith("tpl:") for n in small.feature_names) == 3 + 1  # top 3 + "(other templates)"
    assert len(small.token_feature_names()) == 64


def test_threads_ids_runs_and_test_case_names_do_not_change_features(events: pl.DataFrame, spec: FeatureSpec) -> None:
    fm = featurize_events(events, spec)
    disguised = events.with_columns(
        pl.col("thread").str.replace_all("task", "worker"),
        pl.col("correlation_id").str.reverse(),
        (pl.col("run") + "_renamed"),
        pl.col("test_case").str.replace(ERROR_CASE, "case_x"),
    ).drop("seq_id")
    fm2 = featurize_events(disguised, spec)
    key = ["service", "anomaly", "run_epoch", "n_events"]
    order1 = fm.meta.with_row_index("i").sort(key)["i"].to_numpy()
    order2 = fm2.meta.with_row_index("i").sort(key)["i"].to_numpy()
    assert np.array_equal(fm.X[order1], fm2.X[order2])


def test_features_do_not_grow_with_sequence_length(events: pl.DataFrame, spec: FeatureSpec) -> None:
    one = events.filter(pl.col("seq_id") == pl.col("seq_id").first())
    span = one["timestamp"].max() - one["timestamp"].min()  # type: ignore[operator]
    twice = pl.concat([one, one.with_columns(pl.col("timestamp") + span + pl.duration(milliseconds=1))])
    x1 = featurize_events(one, spec).X[0]
    x2 = featurize_events(twice, spec).X[0]
    names = spec.feature_names
    for j, n in enumerate(names):
        if n == "rate:distinct_templates_per_100":
            assert x2[j] == pytest.approx(x1[j] / 2)
        elif n == "rate:events_per_s":
            assert x2[j] == pytest.approx(x1[j], rel=0.05)
        else:
            assert x2[j] == pytest.approx(x1[j]), n


def test_anomalies_move_aggregates_that_vary_in_normal_data(events: pl.DataFrame, spec: FeatureSpec) -> None:
    fm = featurize_events(events, spec)
    col = {n: j for j, n in enumerate(spec.feature_names)}
    normal = ~fm.meta["anomaly"].to_numpy()
    target = fm.meta["anomaly_service"].to_numpy()
    # an IsolationForest trained on `correct` can only split on features that vary there
    for name in ("level:ERROR", "share:stack_events", "share:failure_words", "level:WARN"):
        assert fm.X[normal, col[name]].std() > 0, name
    for name in ("level:ERROR", "rate:error_code_events", "err:ERR12007", "share:stack_events", "share:failure_words"):
        assert fm.X[target, col[name]].min() > fm.X[normal, col[name]].max(), name
    # the ERROR ApiException template was never seen in `correct` training data
    assert fm.X[target, col["share:unseen_template"]].min() > 0


def test_unseen_messages_are_counted_not_fatal(spec: FeatureSpec) -> None:
    acc = SequenceAccumulator(seq_id="s", run="r", test_case="?", service="token")
    enc = EventEncoder(spec)
    for i in range(4):
        e = Event("token", "r", "?", 1_000 + i, "FATAL", "brand.new.Logger", "boot", f"never seen {i} before")
        acc.add(e, enc(e))
    x = vectorize(acc, spec)
    names = list(spec.feature_names)
    assert x[names.index("share:unseen_template")] == 1.0
    assert x[names.index("level:FATAL")] == 1.0
    assert np.isfinite(x).all()
    assert acc.evidence and acc.evidence[0]["priority"] == 3


def test_spec_json_round_trip_and_fingerprint(spec: FeatureSpec, train_events: pl.DataFrame) -> None:
    text = spec.to_json()
    back = FeatureSpec.from_json(text)
    assert back.fingerprint() == spec.fingerprint() and back.feature_names == spec.feature_names
    assert back.to_json() == text
    assert fit_feature_spec(train_events, min_support=3, top_templates=50, hash_dims=512).fingerprint() == spec.fingerprint()
    assert fit_feature_spec(train_events, min_support=3, top_templates=10, hash_dims=512).fingerprint() != spec.fingerprint()
    data = json.loads(text)
    data["feature_names"] = data["feature_names"][:-1]
    with pytest.raises(ModelLoadError, match="feature names"):
        FeatureSpec.from_dict(data)
    with pytest.raises(ModelLoadError, match="schema_version"):
        FeatureSpec.from_dict({**json.loads(text), "schema_version": 0})


def test_fit_from_settings(train_events: pl.DataFrame) -> None:
    s = Settings(feature_top_templates=4, feature_hash_dims=128, sequence_policy="window", window_seconds=30)
    spec = fit_feature_spec(train_events, **feature_options(s))
    assert len(spec.top_template_ids) == 4 and spec.hash_dims == 128
    assert spec.policy.kind == "window" and spec.policy.window_seconds == 30


def test_unlabelled_tables_without_stacks_are_fine(events: pl.DataFrame, spec: FeatureSpec) -> None:
    full = featurize_events(events, spec)
    bare = featurize_events(events.drop("anomaly", "anomaly_service", "stack", "n_stack_lines"), spec)
    assert bare.meta["anomaly"].null_count() == bare.n_sequences
    # codes (and the HTTP status class they give) may sit in stack traces: those columns may differ
    cols = [j for j, n in enumerate(spec.feature_names) if "stack" not in n and not n.startswith("err:")
            and n not in ("rate:error_code_events", "rate:error_code_surprise") and not n.startswith("share:http_")]
    assert np.array_equal(bare.X[:, cols], full.X[:, cols])
    with_null = events.with_columns(pl.when(pl.col("line_no") == 5).then(None).otherwise(pl.col("message")).alias("message"))
    assert np.isfinite(featurize_events(with_null, spec).X).all()


def test_bad_tables_give_clear_errors(events: pl.DataFrame, spec: FeatureSpec) -> None:
    with pytest.raises(DataLayoutError, match=r"lacks columns \['level'\]"):
        featurize_events(events.drop("level"), spec)
    with pytest.raises(DataLayoutError, match="empty"):
        featurize_events(events.head(0), spec)


def test_token_representation_is_length_normalised(events: pl.DataFrame, spec: FeatureSpec) -> None:
    fm = featurize_events(events, spec)
    sums = np.asarray(fm.X_tokens.sum(axis=1)).ravel()
    assert np.allclose(sums, 1.0)
    assert fm.X_tokens.shape == (fm.n_sequences, spec.hash_dims)
    names = fm.token_feature_names
    assert "tok:<CRED>" in names or any("<CRED>" in n for n in names)


def test_canary_features(events: pl.DataFrame, spec: FeatureSpec) -> None:
    fm = featurize_events(events, spec)
    x, names = canary_features(fm.meta)
    # length and duration only: stack-trace counts measure exceptions (the error signal itself)
    assert names == ["canary:n_events", "canary:duration_s"] == list(CANARY_FEATURES)
    assert x.shape == (fm.n_sequences, 2)
    assert np.array_equal(x[:, 0], fm.meta["n_events"].to_numpy().astype(float))
    assert np.array_equal(x[:, 1], fm.meta["duration_s"].to_numpy())
    assert np.array_equal(canary_features(fm.meta.drop("n_stack_lines"))[0], x)
    with pytest.raises(DataLayoutError, match="duration_s"):
        canary_features(fm.meta.drop("duration_s"))


def test_real_token_sample(real_token_sample: Path) -> None:
    rows = parse_events_from_file(real_token_sample)
    df = pl.DataFrame(rows, schema=SCHEMA).with_columns(pl.col("timestamp").cast(pl.Datetime("ms", "UTC")))
    spec = fit_feature_spec(df.filter(pl.col("test_case") == "part0"), min_support=5)
    fm = featurize_events(df, spec)
    assert fm.n_sequences == 4 and np.isfinite(fm.X).all()
    accs = run_incremental(df, spec)
    assert_parity(fm, accs, spec)


def parse_events_from_file(path: Path) -> list[dict[str, Any]]:
    """The real sample cut into four consecutive "test cases" of one run."""
    lines = path.read_text(encoding="utf-8").splitlines()
    q = len(lines) // 4 + 1
    run = "LO2_run_1739743201"
    out: list[dict[str, Any]] = []
    for k in range(4):
        part = parse_events(lines[k * q:(k + 1) * q], run, f"part{k}", "token")
        for r in part:  # real times are from 2024-06-28: resolve against that day
            p = parse_line(lines[k * q + r["line_no"] - 1])
            assert p is not None
            r["timestamp"] = resolve_timestamp_ms(p.time_of_day_ms, 1_719_592_986_000)
        out += part
    return out


# --------------------------------------------------------------------------------------------------
# The project's generated LO2v2 data, through the real loader
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generated_events(generated_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    from batch.loader import EVENTS_FILE, Selection, load_runs

    out = tmp_path_factory.mktemp("features_generated_events")
    load_runs(generated_v2, Selection(trim_init_lines=100), out)
    return pl.read_parquet(out / EVENTS_FILE)


def test_generated_v2_masking_is_identical_and_collapses_ids(generated_events: pl.DataFrame) -> None:
    from shared.masking import mask_expr, mask_message

    msgs = generated_events.select(pl.col("message").unique().sort()).to_series()
    py = [mask_message(m) for m in msgs.to_list()]
    assert py == msgs.to_frame().select(mask_expr(pl.col("message"))).to_series().to_list()
    assert len(set(py)) < len(msgs) / 20  # thousands of raw messages, a few hundred masked ones at most


def test_generated_v2_batch_equals_incremental_and_flags_targets(generated_events: pl.DataFrame) -> None:
    runs = generated_events.select("run", "run_epoch").unique().sort("run_epoch")["run"].to_list()
    train = generated_events.filter((pl.col("test_case") == "correct") & pl.col("run").is_in(runs[:4]))
    spec = fit_feature_spec(train)
    fm = featurize_events(generated_events, spec)
    assert fm.n_sequences == generated_events["seq_id"].n_unique()
    assert_parity(fm, run_incremental(generated_events, spec), spec)
    col = {n: j for j, n in enumerate(spec.feature_names)}
    normal = ~fm.meta["anomaly"].to_numpy()
    target = fm.meta["anomaly_service"].to_numpy()
    err = fm.X[:, col["level:ERROR"]] + fm.X[:, col["rate:error_code_events"]]
    # most targeted sequences show more errors than a typical normal one
    assert np.mean(err[target] > np.median(err[normal])) > 0.7


def test_error_share_per_logger_family_and_http_status_class() -> None:
    """ERROR events split by logger family (handler / cache / other) and 4xx / 5xx status shares,
    identical in batch and incremental; a status is counted once per event (code or stated text)."""
    run, t0, th = "LO2_run_1739743201", 1_739_743_201_000 + 5_000, "XNIO-1 task-1"
    lines = [_line(t0 + i, th, "c" * 22, "DEBUG", "c.n.openapi.ApiNormalisedPath", "<init>", "normalised = /oauth2/token")
             for i in range(6)]
    lines += [
        _line(t0 + 10, th, "c" * 22, "ERROR", "c.networknt.handler.LightHttpHandler", "setExchangeStatus",
              _status("ERR12013", 404, "USER_NOT_FOUND", "User admin is not found.")),
        _line(t0 + 11, th, "c" * 22, "ERROR", "c.n.oauth.cache.ClientMapStore", "delete", "Exception:"),
        "java.sql.SQLIntegrityConstraintViolationException: Cannot delete or update a parent row",
        _line(t0 + 12, th, "c" * 22, "ERROR", "c.n.o.t.h.Oauth2TokenPostHandler", "handleRequest", "ApiException"),
        "com.networknt.exception.ApiException: " + _status("ERR12007", 401, "UNAUTHORIZED_CLIENT", "wrong secret"),
        "\tat com.networknt.oauth.token.handler.Oauth2TokenPostHandler.handleRequest(Oauth2TokenPostHandler.java:83)",
        _line(t0 + 13, th, "c" * 22, "DEBUG", "io.undertow.request.io", "setResponseCode",
              "Setting error code 500 for exchange HttpServerExchange{ DELETE /oauth2/client/abc}"),
    ]
    known = pl.DataFrame(parse_events(lines, run, "correct", "token"), schema=SCHEMA).with_columns(
        pl.col("timestamp").cast(pl.Datetime("ms", "UTC")))
    spec = fit_feature_spec(known, min_support=1, top_templates=50, hash_dims=64)
    # a second sequence: an ERROR of a logger the vocabulary never saw (family unknown -> other)
    novel = _line(t0 + 20, th, "c" * 22, "ERROR", "com.example.Thing", "run", "boom")
    other = pl.DataFrame(parse_events([lines[0], novel], run, "correct", "user"), schema=SCHEMA).with_columns(
        pl.col("timestamp").cast(pl.Datetime("ms", "UTC")))
    events = pl.concat([known, other])
    fm = featurize_events(events, spec)
    assert_parity(fm, run_incremental(events, spec), spec)
    names = list(spec.feature_names)
    got = {s: {n: fm.X[i, names.index(n)] for n in names if n.startswith(("share:error_events", "share:http"))}
           for i, s in enumerate(fm.meta["service"])}
    assert got["token"] == {
        "share:error_events_handler": 2 / 10, "share:error_events_cache": 1 / 10, "share:error_events_other": 0.0,
        "share:http_4xx_events": 2 / 10, "share:http_5xx_events": 1 / 10,
    }
    assert got["user"]["share:error_events_other"] == 1 / 2
    assert got["user"]["share:error_events_handler"] == got["user"]["share:http_4xx_events"] == 0.0


def test_error_code_surprise_weights_uncommon_codes_more() -> None:
    """``rate:error_code_surprise``: mean surprise (ln(total / count) over training code counts) of the
    codes per event; a code never seen in training weighs ln(total) + 1; batch == incremental."""
    run, t0, th = "LO2_run_1739743201", 1_739_743_201_000 + 5_000, "XNIO-1 task-1"

    def status_line(i: int, code: str) -> str:
        return _line(t0 + i, th, "c" * 22, "ERROR", "c.networknt.handler.LightHttpHandler", "setExchangeStatus",
                     _status(code, 404, "X", "x"))

    def table(lines: list[str], service: str) -> pl.DataFrame:
        return pl.DataFrame(parse_events(lines, run, "correct", service), schema=SCHEMA).with_columns(
            pl.col("timestamp").cast(pl.Datetime("ms", "UTC")))

    common = [status_line(i, "ERR12029") for i in range(9)]
    train = table([*common, status_line(20, "ERR12013")], "token")  # 9 common + 1 uncommon code events
    spec = fit_feature_spec(train, min_support=1, top_templates=10, hash_dims=64)
    assert spec.code_counts == {"ERR12029": 9, "ERR12013": 1}
    assert FeatureSpec.from_json(spec.to_json()).code_counts == spec.code_counts
    plain = _line(t0 + 30, th, "c" * 22, "DEBUG", "c.n.openapi.ApiNormalisedPath", "<init>", "normalised = /x")
    events = pl.concat([
        table([status_line(40, "ERR12029"), plain], "client"),
        table([status_line(41, "ERR12013"), plain], "code"),
        table([status_line(42, "ERR11004"), plain], "user"),  # never seen in training
    ])
    fm = featurize_events(events, spec)
    assert_parity(fm, run_incremental(events, spec), spec)
    col = list(spec.feature_names).index("rate:error_code_surprise")
    got = dict(zip(fm.meta["service"], fm.X[:, col], strict=True))
    assert got["client"] == round(1000 * np.log(10 / 9)) / 1000 / 2
    assert got["code"] == round(1000 * np.log(10 / 1)) / 1000 / 2
    assert got["user"] == round(1000 * (np.log(10) + 1)) / 1000 / 2
    assert got["client"] < got["code"] < got["user"]
