"""The LO2 generator and the catalog: layout, schedule, content, error injection, determinism."""

from __future__ import annotations

import base64
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from batch.generate import GenerateConfig, generate
from batch.generator.simulate import task_picks
from lo2.cli import main as lo2_main
from shared import catalog
from shared.errors import ConfigError
from shared.parsing import (
    LineKind,
    classify,
    parse_line,
    resolve_timestamp_ms,
    service_from_filename,
)
from shared.redaction import redact
from tests.plugins.data import GENERATED_V1_RUNS, GENERATED_V2_ERRORS_PER_RUN, GENERATED_V2_RUNS

CID_RE = re.compile(r"^[A-Za-z0-9_-]{22}$")
#: Codes that `correct` traffic also produces (refresh-token races, expired codes, deleted clients).
NOISE_CODES = {"ERR12029", "ERR12008", "ERR12014"}


def _gt(root: Path) -> dict:
    return json.loads((root / "ground_truth.json").read_text(encoding="utf-8"))


def _service_logs(test_dir: Path) -> dict[str, Path]:
    out = {}
    for f in test_dir.iterdir():
        svc = service_from_filename(f.name)
        if svc is not None:
            out[svc] = f
    return out


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# --- catalog --------------------------------------------------------------------------------------

def test_catalog_has_the_53_real_cases_and_their_targets() -> None:
    assert len(catalog.ERROR_CASES) == 53 == len(set(catalog.ERROR_CASE_NAMES))
    assert catalog.V1_ORDER[0] == catalog.CORRECT and len(catalog.TEST_CASES) == 54
    per_service = Counter(c.service for c in catalog.ERROR_CASES)
    assert per_service == {"token": 12, "user": 11, "client": 10, "code": 9, "service": 8, "refresh-token": 3}
    assert catalog.targets("access_token_client_secret_wrong_401", "token")
    assert not catalog.targets("access_token_client_secret_wrong_401", "client")
    assert not any(catalog.targets(catalog.CORRECT, s) for s in catalog.SERVICES)
    assert catalog.target_service("code_verifier_too_long_pkce_400") == "token"
    assert catalog.target_service("code_challenge_too_long_pkce_400") == "code"
    assert catalog.target_service("no_such_case") is None
    with pytest.raises(KeyError, match="unknown LO2 error case 'nope'"):
        catalog.error_case("nope")


def test_status_json_matches_the_response_lengths_seen_in_real_traces() -> None:
    # Real v2 Jaeger traces: 401 with content length 149 (wrong secret), 404 with 172 (ERR12029, UUID token).
    assert len(catalog.error_case("access_token_client_secret_wrong_401").status.to_json()) == 149
    assert len(catalog.STATUS_CODES["ERR12029"].to_json("3f9d2a61-7b4e-4c08-9e15-a2d7c6b4f830")) == 172


def test_expected_status_comes_from_the_name_and_may_differ_from_the_returned_one() -> None:
    case = catalog.error_case("access_token_missing_authorization_header_400")
    assert (case.expected_status, case.http_status) == (400, 401)
    assert catalog.error_case("register_client_400_clientType").expected_status == 400
    assert all(c.http_status in (400, 401, 404) for c in catalog.ERROR_CASES)


# --- layout and ground truth ---------------------------------------------------------------------

def test_v2_layout_names_and_files(generated_v2: Path) -> None:
    gt = _gt(generated_v2)
    runs = sorted(p for p in generated_v2.iterdir() if p.is_dir())
    assert [r.name for r in runs] == sorted(r["run"] for r in gt["runs"])
    assert len(runs) == GENERATED_V2_RUNS
    for run in runs:
        assert re.fullmatch(r"LO2_run_\d{10}", run.name)
        tests = [p for p in run.iterdir() if p.is_dir()]
        assert len(tests) == 1 + GENERATED_V2_ERRORS_PER_RUN
        assert "correct" in {t.name for t in tests}
        for t in tests:
            assert set(_service_logs(t)) == set(catalog.SERVICES)
            assert (t / "jaeger-container.log").stat().st_size == 0


def test_ground_truth_lists_targets_codes_and_schedule(generated_v2: Path) -> None:
    gt = _gt(generated_v2)
    assert gt["schema_version"] == 1 and gt["layout"] == "v2" and gt["seed"] == 7
    assert gt["targets"] == {c.name: c.service for c in catalog.ERROR_CASES}
    wrong = gt["error_cases"]["access_token_client_secret_wrong_401"]
    assert (wrong["service"], wrong["http_status"], wrong["code"]) == ("token", 401, "ERR12007")
    for run in gt["runs"]:
        on_disk = {p.name for p in (generated_v2 / run["run"]).iterdir() if p.is_dir()}
        assert on_disk == {t["test_case"] for t in run["tests"]}
        for t in run["tests"]:
            assert t["target_service"] == catalog.target_service(t["test_case"])
            logs = _service_logs(generated_v2 / run["run"] / t["test_case"])
            assert t["lines"] == {s: len(_lines(p)) for s, p in logs.items()}


def test_errors_per_run_are_distinct_and_drawn_per_run(generated_v2: Path) -> None:
    picks = [tuple(sorted(t["test_case"] for t in r["tests"] if t["test_case"] != "correct"))
             for r in _gt(generated_v2)["runs"]]
    assert all(len(set(p)) == GENERATED_V2_ERRORS_PER_RUN for p in picks)
    assert len(set(picks)) > 1


def test_v2_schedule_shuffled_20_to_180_s_epoch_is_start(generated_v2: Path) -> None:
    firsts = []
    for run in _gt(generated_v2)["runs"]:
        tests = run["tests"]
        assert run["epoch"] == tests[0]["start_ms"] // 1000
        assert run["run"] == f"LO2_run_{run['epoch']}"
        for a, b in zip(tests, tests[1:], strict=False):
            assert 1000 <= b["start_ms"] - a["end_ms"] <= 5000  # 1-5 s pause
        assert all(20_000 <= t["end_ms"] - t["start_ms"] <= 180_000 for t in tests)
        firsts.append(tests[0]["test_case"])
    assert set(firsts) != {"correct"}  # shuffled: correct is not always first


def test_v1_schedule_fixed_order_60_and_10_s_epoch_after_end(generated_v1: Path) -> None:
    gt = _gt(generated_v1)
    assert len(gt["runs"]) == GENERATED_V1_RUNS
    for run in gt["runs"]:
        assert re.fullmatch(r"light-oauth2-data-\d{10}", run["run"])
        assert [t["test_case"] for t in run["tests"]] == list(catalog.V1_ORDER)
        durations = {t["test_case"]: t["end_ms"] - t["start_ms"] for t in run["tests"]}
        assert durations.pop("correct") == 60_000 and set(durations.values()) == {10_000}
        assert 0 < run["epoch"] * 1000 - run["tests"][-1]["end_ms"] <= 20_000


def test_one_run_crosses_midnight_and_its_stamps_roll_over(generated_v2: Path) -> None:
    gt = _gt(generated_v2)
    crossing = [r for r in gt["runs"] if r["crosses_midnight"]]
    assert [r["run"] for r in crossing] == [gt["runs"][GENERATED_V2_RUNS // 2]["run"]]
    run = crossing[0]
    test = next(t for t in run["tests"] if t["crosses_midnight"])
    times = [p.time_of_day_ms for ln in _lines(generated_v2 / run["run"] / test["test_case"] /
                                               "light-oauth2-oauth2-token-1.log")
             if (p := parse_line(ln)) is not None]
    assert times[0] > 23 * 3_600_000 and times[-1] < 3_600_000  # 23:xx ... 00:xx in one file
    resolved = [resolve_timestamp_ms(t, run["epoch"] * 1000) for t in times]
    assert resolved == sorted(resolved)
    assert resolved[0] >= test["start_ms"] and resolved[-1] <= test["end_ms"] + 5_000


# --- line content ---------------------------------------------------------------------------------

def test_every_line_is_an_event_or_a_continuation_and_times_fit_the_test(generated_v1: Path) -> None:
    gt = _gt(generated_v1)
    kinds: Counter[LineKind] = Counter()
    for run in gt["runs"]:
        for t in run["tests"]:
            for svc, path in _service_logs(generated_v1 / run["run"] / t["test_case"]).items():
                lines = _lines(path)
                if t is run["tests"][0]:  # JVM + OpenTelemetry agent stderr before logback starts
                    assert lines[0].startswith("Picked up JAVA_TOOL_OPTIONS: -javaagent:")
                    assert lines[1].startswith("[otel.javaagent ")
                    lines = lines[2:]
                if lines:
                    assert classify(lines[0]) is LineKind.EVENT, (path, lines[0])
                for ln in lines:
                    kind = classify(ln)
                    kinds[kind] += 1
                    if kind is LineKind.EVENT:
                        p = parse_line(ln)
                        assert p is not None
                        ts = resolve_timestamp_ms(p.time_of_day_ms, run["epoch"] * 1000)
                        assert t["start_ms"] <= ts <= t["end_ms"] + 5_000, (svc, ln)
                        if p.thread.startswith("XNIO"):
                            assert p.correlation_id is not None and CID_RE.match(p.correlation_id)
                        else:
                            assert p.correlation_id is None
                    else:
                        assert ln.startswith(("\tat ", "com.networknt.exception.ApiException: ", "java.")), ln
    assert kinds[LineKind.MALFORMED] == 0 and kinds[LineKind.BLANK] == 0
    assert kinds[LineKind.CONTINUATION] > 0.02 * kinds[LineKind.EVENT]  # stack traces are there


def test_levels_mix_and_hazelcast_lines_in_every_service(generated_v2: Path) -> None:
    levels: Counter[str] = Counter()
    hz_by_service: Counter[str] = Counter()
    xnio_by_service: Counter[str] = Counter()
    for path in generated_v2.glob("*/*/light-oauth2-oauth2-*-1.log"):
        svc = service_from_filename(path.name)
        for ln in _lines(path):
            p = parse_line(ln)
            if p is None:
                continue
            levels[p.level] += 1
            if p.thread.startswith("hz."):
                hz_by_service[svc] += 1
            elif p.thread.startswith("XNIO"):
                xnio_by_service[svc] += 1
    assert {"DEBUG", "INFO", "WARN", "ERROR"} <= set(levels)
    assert all(hz_by_service[s] > 0 for s in catalog.SERVICES)
    assert xnio_by_service["key"] == 0  # no Locust task calls the key service
    assert all(xnio_by_service[s] > 0 for s in catalog.SERVICES if s != "key")


def test_correct_is_not_error_free(generated_v1: Path) -> None:
    errors = Counter()
    for path in generated_v1.glob("*/correct/light-oauth2-oauth2-*-1.log"):
        for ln in _lines(path):
            p = parse_line(ln)
            if p is not None and p.level == "ERROR":
                errors[(p.logger, p.method)] += 1
    assert sum(errors.values()) > 0
    assert any(m == "delete" and "ClientMapStore" in lg for lg, m in errors) or \
        ("c.n.o.t.h.Oauth2TokenPostHandler", "handleRequest") in errors


def test_every_error_case_shows_its_code_in_its_target_service_only(generated_v1: Path) -> None:
    gt = _gt(generated_v1)
    seen = set()
    for run in gt["runs"]:
        for t in run["tests"]:
            if t["test_case"] == "correct":
                continue
            case = catalog.error_case(t["test_case"])
            logs = {s: p.read_text(encoding="utf-8") for s, p in
                    _service_logs(generated_v1 / run["run"] / t["test_case"]).items()}
            target = logs[case.service]
            assert target.count(f'"code":"{case.code}"') >= 3, (t["test_case"], case.code)
            assert case.error_message in target
            if case.code not in NOISE_CODES:
                for svc, text in logs.items():
                    if svc != case.service:
                        assert case.code not in text, (t["test_case"], svc)
            seen.add(case.name)
    assert seen == set(catalog.ERROR_CASE_NAMES)


def test_token_errors_throw_api_exceptions_with_stack_traces(generated_v1: Path) -> None:
    path = next(generated_v1.glob("*/access_token_client_secret_wrong_401/light-oauth2-oauth2-token-1.log"))
    lines = _lines(path)
    i = next(i for i, ln in enumerate(lines) if ln.endswith("ERROR c.n.o.t.h.Oauth2TokenPostHandler handleRequest - ApiException"))
    assert lines[i + 1].startswith('com.networknt.exception.ApiException: {"statusCode":401,"code":"ERR12007"')
    assert lines[i + 2].startswith("\tat com.networknt.oauth.token.handler.Oauth2TokenPostHandler.")


def test_startup_lines_only_in_the_first_test_of_each_run(generated_v1: Path, generated_v2: Path) -> None:
    for root in (generated_v1, generated_v2):
        for run in _gt(root)["runs"]:
            first = run["tests"][0]["test_case"]
            for t in run["tests"]:
                for svc, path in _service_logs(root / run["run"] / t["test_case"]).items():
                    text = path.read_text(encoding="utf-8")
                    if t["test_case"] == first:
                        head = text.splitlines()[2:102]
                        assert all(" [main] " in ln or " [hz." in ln for ln in head), (svc, path)
                        assert "registered for" in text and "Https Server started" in text
                    else:
                        assert "registered for" not in text


def test_status_yml_is_loaded_once_per_container_before_its_first_error(generated_v1: Path) -> None:
    for run in _gt(generated_v1)["runs"]:
        for svc in catalog.SERVICES:
            loads, first_error_seen = 0, False
            for t in run["tests"]:
                for ln in _lines(generated_v1 / run["run"] / t["test_case"] / f"light-oauth2-oauth2-{svc}-1.log"):
                    if "Config loaded from default folder for status.yml" in ln:
                        loads += 1
                        assert not first_error_seen
                    p = parse_line(ln)
                    if p is not None and p.level == "ERROR" and p.thread.startswith("XNIO"):
                        first_error_seen = True
                        assert loads == 1
            assert loads <= 1


def test_logs_carry_per_run_secrets_that_redaction_removes(generated_v2: Path) -> None:
    basic_by_run: dict[str, set[str]] = {}
    passwords = 0
    for run in _gt(generated_v2)["runs"]:
        creds = basic_by_run.setdefault(run["run"], set())
        for path in (generated_v2 / run["run"]).glob("*/light-oauth2-oauth2-*-1.log"):
            for ln in _lines(path):
                m = re.search(r'"Basic ([A-Za-z0-9+/=]+)"', ln)
                if m:
                    creds.add(m.group(1))
                    assert m.group(1) not in redact(ln)
                if '"password":"' in ln:
                    passwords += 1
                    assert '"password":"' not in redact(ln)
    client_creds = {c for s in basic_by_run.values() for c in s if b":" in base64.b64decode(c)}
    assert client_creds and passwords > 0
    runs = list(basic_by_run.values())
    assert not (runs[0] - {"YWRtaW46MTIzNDU2"}) & (runs[1] - {"YWRtaW46MTIzNDU2"})  # random per run


# --- determinism, options, errors -------------------------------------------------------------------

def _digest(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.log"))}


def test_same_seed_same_bytes_other_seed_other_bytes_any_jobs(tmp_path: Path) -> None:
    kw = dict(runs=2, layout="v2", errors_per_run=1, rate=0.5)
    a = generate(GenerateConfig(out=tmp_path / "a", seed=1, **kw))
    b = generate(GenerateConfig(out=tmp_path / "b", seed=1, jobs=2, **kw))
    c = generate(GenerateConfig(out=tmp_path / "c", seed=2, **kw))
    assert _digest(a.out) == _digest(b.out)
    assert _gt(a.out) == _gt(b.out)
    assert _digest(a.out) != _digest(c.out)


def test_services_subset_writes_only_those_with_identical_content(tmp_path: Path) -> None:
    kw = dict(runs=1, layout="v2", errors_per_run=2, seed=3, rate=0.5)
    full = generate(GenerateConfig(out=tmp_path / "full", **kw))
    part = generate(GenerateConfig(out=tmp_path / "part", services=("token", "key"), aux_files=False, **kw))
    files = _digest(part.out)
    assert {Path(k).name for k in files} == {"light-oauth2-oauth2-token-1.log", "light-oauth2-oauth2-key-1.log"}
    full_files = _digest(full.out)
    assert all(full_files[k] == v for k, v in files.items())


def test_min_errors_guarantees_failing_requests_at_tiny_rates(tmp_path: Path) -> None:
    res = generate(GenerateConfig(out=tmp_path / "g", runs=1, layout="v1", rate=0.05, min_errors=4,
                                  cases=("update_password_400_not_match",), seed=5))
    text = next(res.out.glob("*/update_password_400_not_match/light-oauth2-oauth2-user-1.log")).read_text()
    assert text.count('"code":"ERR12012"') == 4


@pytest.mark.parametrize("case", ["authorization_code_missing_response_type_400", "code_verifier_missing_pkce_400",
                                  "get_token_404", "update_password_400_not_match"])
def test_how_many_requests_a_user_sends_does_not_depend_on_the_label(case: str) -> None:
    """The min-errors guarantee flips picks of the owning user; it never adds requests to error tests.

    It once appended error requests when the owner had too few picks, so the targeted logs of the
    sparse code flows were busier than in any other test (a length/rate signal the real system does
    not have).  The same random state must give the same request times for ``correct`` and the error.
    """
    user = catalog.error_case(case).locust_user
    start, end = 1_000_000, 1_020_000  # a 20 s test at a low rate: a few picks at most
    for seed in range(40):
        normal = task_picks(random.Random(seed), user, catalog.CORRECT, start, end, 0.2, 3)
        error = task_picks(random.Random(seed), user, case, start, end, 0.2, 3)
        assert [t for t, _ in error] == [t for t, _ in normal]
        assert len(normal) >= 3 and all(start <= t < end for t, _ in normal)
        assert not any(e for _, e in normal)
        assert sum(e for _, e in error) >= 3


def test_users_that_do_not_own_the_error_send_only_correct_picks() -> None:
    picks = task_picks(random.Random(1), "ClientCredentialsFlow", "get_token_404", 0, 60_000, 1.0, 3)
    assert picks and not any(e for _, e in picks)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layout": "v3"}, "layout 'v3' is not known"),
        ({"runs": 0}, "runs must be at least 1"),
        ({"errors_per_run": 54}, "errors_per_run must be between 0 and 53"),
        ({"services": ("token", "gateway")}, "services ['gateway'] not known"),
        ({"cases": ("correct",)}, "unknown or repeated"),
        ({"rate": 0.0}, "rate must be in"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        GenerateConfig(out=tmp_path, **kwargs)


def test_refuses_foreign_folders_and_replaces_own_dataset_with_force(tmp_path: Path) -> None:
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        generate(GenerateConfig(out=tmp_path / "foreign", runs=1, errors_per_run=0))
    with pytest.raises(ConfigError, match="holds no ground_truth.json"):
        generate(GenerateConfig(out=tmp_path / "foreign", runs=1, errors_per_run=0, force=True))
    first = generate(GenerateConfig(out=tmp_path / "own", runs=1, errors_per_run=0, seed=1, rate=0.3))
    second = generate(GenerateConfig(out=tmp_path / "own", runs=1, errors_per_run=0, seed=2, rate=0.3, force=True))
    names = {p.name for p in (tmp_path / "own").iterdir()}
    assert first.runs[0]["run"] != second.runs[0]["run"]  # seed-chosen start: the old run is gone
    assert names == {"ground_truth.json", second.runs[0]["run"]}
    assert _gt(second.out)["seed"] == 2
    assert (tmp_path / "foreign" / "keep.txt").exists()


def test_cli_generate_writes_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    rc = lo2_main(["generate", "--out", str(out), "--runs", "2", "--layout", "v1", "--errors-per-run", "2",
                   "--seed", "11", "--rate", "1", "--start-epoch", "1719000000", "--midnight-run", "-1",
                   "--jobs", "1"])
    assert rc == 0
    gt = _gt(out)
    assert gt["layout"] == "v1" and gt["rate"] == 1.0 and len(gt["runs"]) == 2
    assert not any(r["crosses_midnight"] for r in gt["runs"])
    assert gt["runs"][0]["tests"][0]["start_ms"] == 1_719_000_000_000
    assert lo2_main(["generate", "--out", str(out), "--runs", "1"]) == 2  # not empty, no --force
    assert "is not empty; pass --force" in " ".join(capsys.readouterr().err.split())


def test_loader_reads_the_ground_truth_targets(generated_v2: Path) -> None:
    """Interface with batch.loader: its anomaly_service rule accepts our ground_truth.json."""
    from batch.loader import target_fn_for_root

    target = target_fn_for_root(generated_v2)
    for case in catalog.ERROR_CASES:
        assert target(case.name, case.service)
        assert not any(target(case.name, s) for s in catalog.SERVICES if s != case.service)
    assert not any(target("correct", s) for s in catalog.SERVICES)


def test_cli_notes_error_cases_whose_target_service_is_not_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by QA: with --services leaving out a targeted service, such error tests left no trace
    in any log, without a word."""
    from shared.catalog import target_service

    args = ["generate", "--runs", "1", "--errors-per-run", "10", "--seed", "3", "--no-aux-files"]
    assert lo2_main([*args, "--out", str(tmp_path / "all")]) == 0
    assert "note:" not in capsys.readouterr().err
    assert lo2_main([*args, "--out", str(tmp_path / "some"), "--services", "token,user,key"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    unseen = sorted({t["test_case"] for t in _gt(tmp_path / "some")["runs"][0]["tests"]
                     if target_service(t["test_case"]) not in (None, "token", "user", "key")})
    assert unseen, "seed 3 should pick a case targeting another service"
    assert f"note: {len(unseen)} generated error case(s) target a service not written" in err
    assert all(case in err for case in unseen[:6])
