"""batch.loader / batch.layout / `lo2 load`: layouts, selection flags, parsing, bad input, outputs.

Small hand-written run trees in tmp_path for the precise cases (bad bytes, roll-over, stack traces)
and the session's generated datasets (tests/plugins/data.py) for the whole-run checks.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from batch.layout import discover_runs
from batch.loader import (
    EVENTS_SCHEMA,
    SEQUENCES_SCHEMA,
    Selection,
    load_runs,
    make_selection,
    parse_file,
    target_fn_for_root,
)
from lo2.cli import main as lo2_main
from shared.errors import ConfigError, DataLayoutError
from shared.parsing import SERVICES, file_seq_id

REQ = "[XNIO-1 task-2]  Qm7rT2xWZ0aKc4Ne-P9sLw DEBUG c.n.o.t.h.Oauth2TokenPostHandler handleRequest - msg {i}"
HZ = "[hz._hzInstance_1_dev.partition-operation.thread-8]   DEBUG c.networknt.oauth.cache.UserMapStore load - Load:{i}"


def event(t: str, i: int = 0, hz: bool = False) -> str:
    return f"{t} {(HZ if hz else REQ).format(i=i)}"


def write_log(root: Path, run: str, case: str, service: str, lines: list[str] | bytes) -> Path:
    d = root / run / case
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"light-oauth2-oauth2-{service}-1.log"
    p.write_bytes(lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode())
    return p


def make_run(root: Path, run: str, cases: list[str], services: tuple[str, ...] = SERVICES, n: int = 3,
             t0: str = "12:00:00") -> None:
    for case in cases:
        for svc in services:
            write_log(root, run, case, svc, [event(f"{t0}.{k:03d}", k) for k in range(n)])


def load(root: Path, out: Path | None = None, **flags: object) -> tuple[object, pl.DataFrame, pl.DataFrame]:
    flags.setdefault("trim_init_lines", 0)
    out = out or root.parent / f"{root.name}_out"
    summary = load_runs(root, make_selection(**flags), out)  # type: ignore[arg-type]
    ev = pl.read_parquet(out / "events.parquet") if (out / "events.parquet").exists() else pl.DataFrame()
    sq = pl.read_parquet(out / "sequences.parquet") if (out / "sequences.parquet").exists() else pl.DataFrame()
    return summary, ev, sq


# --------------------------------------------------------------------------------------------
# Layouts and run discovery
# --------------------------------------------------------------------------------------------


def test_v1_v2_and_zip_layouts_are_found_sorted_by_epoch(tmp_path: Path) -> None:
    root = tmp_path / "root"
    # created out of order on purpose: the result must not depend on the file system's order
    make_run(root, "LO2_run_1739743201", ["correct"], ("token",))
    make_run(root, "light-oauth2-data-1719592986", ["correct"], ("token",))
    make_run(root, "oauth2_logs_LO2_run_1739430001", ["correct"], ("token",))
    (root / "prerun results").mkdir()
    (root / "README.txt").write_text("not a run")
    runs = discover_runs(root)
    assert [(r.run, r.epoch, r.layout) for r in runs] == [
        ("light-oauth2-data-1719592986", 1719592986, "v1"),
        ("LO2_run_1739430001", 1739430001, "v2"),  # zip variant: same id as in LO2v2.zip
        ("LO2_run_1739743201", 1739743201, "v2"),
    ]
    summary, ev, _ = load(root)
    assert summary.layouts == {"v1": 1, "v2": 2}
    assert ev["run"].unique(maintain_order=True).to_list() == [r.run for r in runs]


def test_root_one_level_above_and_single_run_root(tmp_path: Path) -> None:
    make_run(tmp_path / "lo2-sample" / "logs", "light-oauth2-data-1719592986", ["correct"], ("key",))
    assert [r.run for r in discover_runs(tmp_path / "lo2-sample")] == ["light-oauth2-data-1719592986"]
    single = tmp_path / "lo2-sample" / "logs" / "light-oauth2-data-1719592986"
    assert [r.run for r in discover_runs(single)] == ["light-oauth2-data-1719592986"]


def test_unknown_layout_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "run_0001" / "error1").mkdir(parents=True)
    with pytest.raises(DataLayoutError, match=r"no LO2 run folders .*found: run_0001.*LO2_run_<epoch>"):
        discover_runs(tmp_path)
    with pytest.raises(DataLayoutError, match="does not exist"):
        discover_runs(tmp_path / "nope")
    make_run(tmp_path / "dup", "LO2_run_1739743201", ["correct"], ("token",))
    make_run(tmp_path / "dup", "oauth2_logs_LO2_run_1739743201", ["correct"], ("token",))
    with pytest.raises(DataLayoutError, match="appears twice"):
        discover_runs(tmp_path / "dup")


def test_cli_reports_unknown_layout_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "something").mkdir()
    assert lo2_main(["load", "--root", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 2
    assert "no LO2 run folders" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Selection flags
# --------------------------------------------------------------------------------------------

CASES = ["correct", "get_token_404", "delete_token_404", "get_client_404_no_client", "register_user_400_user_exists"]


@pytest.fixture(scope="module")
def five_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("five_runs")
    for k in range(5):
        make_run(root, f"LO2_run_{1739743201 + 1000 * k}", CASES, ("token", "client"), n=2)
    return root


def _cases(summary: object) -> dict[str, list[str]]:
    return summary.test_cases_by_run  # type: ignore[attr-defined, no-any-return]


def test_runs_takes_the_oldest_and_errors_per_run_is_seeded(five_runs: Path, tmp_path: Path) -> None:
    s1, ev, _ = load(five_runs, tmp_path / "a", runs=3, errors_per_run=2, seed=1)
    s2, _, _ = load(five_runs, tmp_path / "b", runs=3, errors_per_run=2, seed=1)
    s3, _, _ = load(five_runs, tmp_path / "c", runs=3, errors_per_run=2, seed=2)
    assert list(_cases(s1)) == [f"LO2_run_{1739743201 + 1000 * k}" for k in range(3)]
    assert _cases(s1) == _cases(s2)  # reproducible
    assert _cases(s1) != _cases(s3)  # and the seed matters
    for cases in _cases(s1).values():
        assert cases[0] == "correct" and len(cases) == 3
    assert s1.downsampled and s1.runs_available == 5
    assert set(ev["test_case"]) == {c for v in _cases(s1).values() for c in v}


def test_all_errors_by_default_and_no_duplicates(five_runs: Path, tmp_path: Path) -> None:
    s, _, _ = load(five_runs, tmp_path / "all")
    assert all(sorted(v) == sorted(CASES) for v in _cases(s).values())
    assert not s.downsampled
    s, _, _ = load(five_runs, tmp_path / "nodup", errors_per_run=1, allow_duplicates=False, seed=3)
    errors = [c for v in _cases(s).values() for c in v if c != "correct"]
    assert len(errors) == 4 and len(set(errors)) == 4  # 4 error cases exist: the 5th run gets none
    assert _cases(s)[f"LO2_run_{1739743201 + 4000}"] == ["correct"]


def test_single_error_type_named_and_random(five_runs: Path, tmp_path: Path) -> None:
    # a run without the case is skipped entirely (as in LogLead) and reported
    lacking = tmp_path / "lacking"
    make_run(lacking, "LO2_run_1739743201", ["correct", "get_token_404"], ("token",))
    make_run(lacking, "LO2_run_1739753201", ["correct", "delete_token_404"], ("token",))
    s, ev, _ = load(lacking, single_error_type="get_token_404")
    assert _cases(s) == {"LO2_run_1739743201": ["correct", "get_token_404"]}
    assert s.runs_skipped == [{"run": "LO2_run_1739753201", "reason": "no test case 'get_token_404'"}]
    assert set(ev["run"]) == {"LO2_run_1739743201"}
    r1, _, _ = load(five_runs, tmp_path / "r1", single_error_type="random", seed=5)
    r2, _, _ = load(five_runs, tmp_path / "r2", single_error_type="random", seed=5)
    picked = {tuple(v) for v in _cases(r1).values()}
    assert len(picked) == 1 and _cases(r1) == _cases(r2)


def test_service_filters(five_runs: Path, tmp_path: Path) -> None:
    _, ev, _ = load(five_runs, tmp_path / "one", single_service="client", runs=1)
    assert set(ev["service"]) == {"client"}
    _, ev, _ = load(five_runs, tmp_path / "two", service_types=["token", "client"], runs=1)
    assert set(ev["service"]) == {"token", "client"}
    with pytest.raises(ConfigError, match="both given"):
        make_selection(single_service="token", service_types=["client"])
    with pytest.raises(ConfigError, match="unknown service"):
        make_selection(service_types=["oauth2-token"])


def test_missing_services_are_reported(five_runs: Path, tmp_path: Path) -> None:
    s, _, _ = load(five_runs, tmp_path / "m", runs=1, errors_per_run=1, seed=0)
    missing = {(m["test_case"], tuple(m["services"])) for m in s.missing_services}  # type: ignore[attr-defined]
    others = tuple(x for x in SERVICES if x not in ("token", "client"))
    assert {m[1] for m in missing} == {others} and len(missing) == 2


# --------------------------------------------------------------------------------------------
# Parsing: dates, roll-over, stack traces, trimming
# --------------------------------------------------------------------------------------------


def test_midnight_rollover_v2_start_and_v1_end(tmp_path: Path) -> None:
    root = tmp_path / "r"
    start = int(datetime(2025, 2, 16, 23, 59, 30, tzinfo=UTC).timestamp())  # v2 epoch = run start
    write_log(root, f"LO2_run_{start}", "correct", "token", [event("23:59:59.999"), event("00:00:00.001")])
    end = int(datetime(2024, 6, 29, 0, 1, 0, tzinfo=UTC).timestamp())  # v1 epoch = run end
    write_log(root, f"light-oauth2-data-{end}", "correct", "token", [event("23:59:58.000"), event("00:00:59.000")])
    _, ev, sq = load(root)
    got = ev.sort("run_epoch", "line_no")["timestamp"].to_list()
    assert got == [
        datetime(2024, 6, 28, 23, 59, 58, tzinfo=UTC),
        datetime(2024, 6, 29, 0, 0, 59, tzinfo=UTC),
        datetime(2025, 2, 16, 23, 59, 59, 999_000, tzinfo=UTC),
        datetime(2025, 2, 17, 0, 0, 0, 1_000, tzinfo=UTC),
    ]
    assert sorted(sq["duration_s"].to_list()) == [0.002, 61.0]


def test_stack_lines_attach_to_the_event_before_them(tmp_path: Path) -> None:
    lines = [
        "\tat orphan.Before(First.java:1)",
        event("10:00:00.000", 1),
        event("10:00:00.001", 2),
        "com.networknt.exception.ApiException: {\"statusCode\":404}",
        "\tat com.networknt.Handler.handle(Handler.java:42)",
        "Caused by: java.sql.SQLException: boom",
        event("10:00:00.002", 3),
    ]
    p = write_log(tmp_path, "LO2_run_1739743201", "correct", "token", lines)
    df, st = parse_file(p, "LO2_run_1739743201", 1739743201, "correct", "token")
    assert df["stack"].to_list() == [None, "\n".join(lines[3:6]), None]
    assert df["n_stack_lines"].to_list() == [0, 3, 0]
    assert df["line_no"].to_list() == [2, 3, 7]
    assert (st.events, st.continuation_lines, st.orphan_continuation_lines) == (3, 3, 1)


def test_trimming_drops_first_events_with_their_stacks_even_in_short_files(tmp_path: Path) -> None:
    lines = [event("10:00:00.000", 0), "\tat x", event("10:00:00.001", 1), "\tat y", event("10:00:00.002", 2)]
    p = write_log(tmp_path, "LO2_run_1739743201", "correct", "token", lines)
    df, st = parse_file(p, "LO2_run_1739743201", 1739743201, "correct", "token", trim_init_lines=1)
    assert df["message"].to_list() == ["msg 1", "msg 2"] and df["stack"].to_list() == ["\tat y", None]
    assert (st.events_trimmed, st.events_written) == (1, 2)
    df, st = parse_file(p, "LO2_run_1739743201", 1739743201, "correct", "token", trim_init_lines=100)
    assert df.height == 0 and st.events_trimmed == 3  # LogLead left files of <= 100 lines untrimmed
    assert st.lines_trimmed == 5  # the events and their stack lines


MAIN = "[main]   INFO  com.networknt.server.Server start - {m}"
GENERIC = "[hz._hzInstance_1_dev.generic-operation.thread-1]   DEBUG c.n.oauth.cache.ClientMapStore loadAllKeys - x"
JVM = ["Picked up JAVA_TOOL_OPTIONS: -javaagent:/opentelemetry-javaagent.jar",
       "[otel.javaagent 2025-02-13 00:55:36:100 +0000] [main] INFO io.opentelemetry - version: 1.32.1"]


def test_startup_mode_drops_the_head_up_to_the_first_traffic_line(tmp_path: Path) -> None:
    run = "LO2_run_1739743201"
    block = [*JVM, f"10:00:00.000 {MAIN.format(m='server starts')}", "\tat frame.of(Startup.java:1)", "",
             f"10:00:00.001 {GENERIC}", f"10:00:00.002 {MAIN.format(m='Registry is disabled')}"]
    traffic = [event("10:00:01.000", 1, hz=True), event("10:00:01.001", 2), "\tat x",
               f"10:00:02.000 {MAIN.format(m='not start-up: after traffic')}"]
    p = write_log(tmp_path, run, "correct", "token", block + traffic)
    df, st = parse_file(p, run, 1739743201, "correct", "token", trim_mode="startup")
    assert df["line_no"].to_list() == [len(block) + 1, len(block) + 2, len(block) + 4]
    assert (st.lines_trimmed, st.events_trimmed, st.events_written) == (len(block), 3, 3)
    assert df["stack"].to_list() == [None, "\tat x", None]
    # the same file without the block: nothing to trim
    p2 = write_log(tmp_path, run, "other", "token", traffic)
    assert parse_file(p2, run, 1739743201, "other", "token", trim_mode="startup")[1].lines_trimmed == 0
    # a head on Hazelcast start-up threads without any `main` event is not a container start-up
    p3 = write_log(tmp_path, run, "hz", "token", [f"10:00:00.001 {GENERIC}", *traffic])
    assert parse_file(p3, run, 1739743201, "hz", "token", trim_mode="startup")[1].lines_trimmed == 0
    # start-up output and no traffic at all: the whole log is start-up
    p4 = write_log(tmp_path, run, "idle", "token", block)
    df4, st4 = parse_file(p4, run, 1739743201, "idle", "token", trim_mode="startup")
    assert df4.height == 0 and st4.lines_trimmed == st4.lines == len(block)


def test_startup_mode_keeps_the_real_token_sample_whole(real_token_sample: Path) -> None:
    """The real v1 fragment starts mid-traffic (a partition-operation line): nothing is start-up."""
    df, st = parse_file(real_token_sample, "light-oauth2-data-1719592986", 1_719_592_986, "correct", "token",
                        trim_mode="startup")
    assert st.lines_trimmed == st.events_trimmed == 0 and df.height == st.events == 22_660


def test_trim_defaults_and_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert Selection().trim == ("startup", 100)
    assert make_selection().trim == ("startup", 100)
    assert Selection(trim_init_lines=0).trim == ("lines", 0)  # the count alone: the LogLead rule
    assert make_selection(trim_mode="none").trim == ("none", 100)
    with pytest.raises(ConfigError, match="trim_mode"):
        Selection(trim_mode="first")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="trim_init_lines"):
        Selection(trim_init_lines=-1)
    root = tmp_path / "r"
    make_run(root, "LO2_run_1739743201", ["correct"], ("token",))
    rc = lo2_main(["load", "--root", str(root), "--no-save", "--trim-mode", "startup", "--trim-init-lines", "5"])
    assert rc == 2 and "--trim-init-lines" in capsys.readouterr().out
    assert lo2_main(["load", "--root", str(root), "--no-save", "--trim-init-lines", "2", "--head", "0"]) == 0
    out = capsys.readouterr().out
    assert "lines (2 events)" in out and "lines trimmed" in out


def _startup_block_lines(path: Path) -> tuple[int, int]:
    """(lines, timestamped lines) up to the generator's last start-up line (batch/generator/startup.py)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    last = next((i for i, line in enumerate(lines) if "Registry is disabled, service is not registered" in line), -1)
    head = lines[: last + 1]
    return len(head), sum(1 for line in head if line[:1].isdigit())


def _check_startup_trim(root: Path, tmp_path: Path, first_tests: dict[str, str]) -> None:
    """Each run's first test loses exactly its start-up block, every other log loses nothing."""
    keep = load_runs(root, make_selection(trim_mode="none"), tmp_path / "none")
    trim = load_runs(root, make_selection(trim_mode="startup"), tmp_path / "startup")
    full = pl.read_parquet(tmp_path / "none" / "sequences.parquet")
    cut = pl.read_parquet(tmp_path / "startup" / "sequences.parquet")
    both = full.join(cut, on="seq_id", how="left", suffix="_t").with_columns(pl.col("n_events_t").fill_null(0))
    expected_lines = 0
    for run, case, svc, n, n_t in both.select("run", "test_case", "service", "n_events", "n_events_t").iter_rows():
        path = next(p for p in root.glob(f"*{run.removeprefix('LO2_run_')}*/{case}/light-oauth2-oauth2-{svc}-1.log"))
        lines, events = _startup_block_lines(path)
        if first_tests[run] == case:
            assert events > 100 and n - n_t == events, (run, case, svc)
            expected_lines += lines
        else:
            assert lines == 0 and n_t == n, (run, case, svc)
    assert trim.lines_trimmed == expected_lines and trim.files_trimmed == len(first_tests) * len(SERVICES)
    assert trim.events_written == keep.events_written - trim.events_trimmed
    ev = pl.read_parquet(tmp_path / "startup" / "events.parquet", columns=["thread", "message"])
    assert ev.filter(pl.col("thread") == "main").height == 0
    assert ev.filter(pl.col("message").str.contains("registered for handler chain")).height == 0


def test_generated_v2_startup_trim_takes_exactly_the_first_tests_block(generated_v2: Path, tmp_path: Path) -> None:
    gt = json.loads((generated_v2 / "ground_truth.json").read_text())
    firsts = {r["run"]: r["tests"][0]["test_case"] for r in gt["runs"]}
    assert sum(c != "correct" for c in firsts.values()) > 0  # v2: the first test is any test
    _check_startup_trim(generated_v2, tmp_path, firsts)
    # the fixed trim deletes whole short sequences and cuts real traffic everywhere
    lines = load_runs(generated_v2, make_selection(trim_init_lines=100), tmp_path / "lines")
    startup = json.loads((tmp_path / "startup" / "load_summary.json").read_text())
    assert lines.sequences_written < startup["sequences_written"] == startup["files_read"] - startup["empty_files"]
    assert lines.files_trimmed == lines.files_read - lines.empty_files > startup["files_trimmed"]


# --------------------------------------------------------------------------------------------
# Bad input: counted, reported, never fatal
# --------------------------------------------------------------------------------------------


def test_bad_input_is_counted_and_loading_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    run = "LO2_run_1739743201"
    write_log(root, run, "correct", "token",
              event("10:00:00.000", 1).encode() + b" \xff\xfe tail\n" + event("10:00:00.001", 2).encode() + b"\n")
    write_log(root, run, "correct", "client", b"")  # empty file
    write_log(root, run, "correct", "user", bytes(range(256)) * 4)  # binary garbage
    write_log(root, run, "correct", "code", [event("10:00:00.000"), "10:00:00.001 [XNIO-1 task-2] trunc", ""])
    summary, ev, sq = load(root)
    s = summary
    assert (s.files_read, s.empty_files, s.files_with_undecodable_bytes) == (4, 1, 2)
    assert s.undecodable_lines >= 2 and s.malformed_lines >= 1 and s.blank_lines >= 1
    tok = ev.filter(pl.col("service") == "token")
    assert tok["message"].to_list() == ["msg 1 \ufffd\ufffd tail", "msg 2"]  # the bad line is kept
    assert set(sq["service"]) == {"token", "code"}
    kinds = {p.kind for p in s.examples}
    assert {"undecodable", "malformed"} <= kinds
    assert [m["services"] for m in s.missing_services] == [["key", "refresh-token", "service"]]
    doc = json.loads((tmp_path / "bad_out" / "load_summary.json").read_text())
    assert doc["malformed_lines"] == s.malformed_lines and doc["empty_files"] == 1


def test_secrets_in_bad_line_examples_are_redacted(tmp_path: Path) -> None:
    secret = "Basic MGU4ZjRjMmEtMWIzZC00ZTVmLTlhN2ItNmM1ZDRlM2YyYTFi"
    write_log(tmp_path / "s", "LO2_run_1739743201", "correct", "token", [f"10:00:00.000 [x] {secret} oops"])
    s, _, _ = load(tmp_path / "s")
    assert s.examples and all("MGU4ZjRj" not in p.text for p in s.examples)


# --------------------------------------------------------------------------------------------
# Outputs: schemas, streaming, labels, whole generated datasets
# --------------------------------------------------------------------------------------------


def test_outputs_follow_the_contract_and_batches_do_not_change_them(five_runs: Path, tmp_path: Path) -> None:
    s_big = load_runs(five_runs, make_selection(trim_init_lines=1), tmp_path / "big")
    s_small = load_runs(five_runs, make_selection(trim_init_lines=1), tmp_path / "small", batch_bytes=1)
    for name, schema in (("events.parquet", EVENTS_SCHEMA), ("sequences.parquet", SEQUENCES_SCHEMA)):
        meta = pq.ParquetFile(tmp_path / "big" / name).metadata
        assert meta.row_group(0).column(0).compression == "ZSTD"
        big, small = pl.read_parquet(tmp_path / "big" / name), pl.read_parquet(tmp_path / "small" / name)
        assert big.columns == schema.names
        assert big.equals(small)
    assert s_big.events_written == s_small.events_written > 0
    ev = pl.read_parquet(tmp_path / "big" / "events.parquet")
    assert ev.schema["timestamp"] == pl.Datetime("ms", "UTC")
    assert ev.schema["line_no"] == pl.Int32 and ev.schema["n_stack_lines"] == pl.Int32
    sq = pl.read_parquet(tmp_path / "big" / "sequences.parquet")
    agg = ev.group_by("seq_id").agg(n=pl.len(), start=pl.col("timestamp").min())
    joined = sq.join(agg, on="seq_id")
    assert joined.height == sq.height == ev["seq_id"].n_unique()
    assert (joined["n_events"] == joined["n"]).all() and (joined["start"] == joined["start_right"]).all()
    row = ev.row(0, named=True)
    assert row["seq_id"] == file_seq_id(row["run"], row["test_case"], row["service"])


def test_a_failure_mid_load_leaves_no_output_behind(five_runs: Path, tmp_path: Path) -> None:
    """Batches are written on a second thread: an error while one is in flight still aborts cleanly."""
    calls: list[int] = []

    def progress(files: int, runs_done: int, runs_total: int, lines: int) -> None:
        calls.append(files)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_runs(five_runs, make_selection(), tmp_path / "o", batch_bytes=1, progress=progress)
    assert list((tmp_path / "o").iterdir()) == []


def test_no_output_dir_only_counts(five_runs: Path, tmp_path: Path) -> None:
    s = load_runs(five_runs, make_selection(runs=1), None)
    assert s.outputs == {} and s.lines > 0


def test_labels_from_catalog_and_ground_truth(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    make_run(root, "LO2_run_1739743201", ["correct", "access_token_client_secret_wrong_401"], ("token", "client"))
    _, ev, sq = load(root)
    lab = sq.select("test_case", "service", "anomaly", "anomaly_service").sort("test_case", "service").rows()
    assert lab == [
        ("access_token_client_secret_wrong_401", "client", True, False),
        ("access_token_client_secret_wrong_401", "token", True, True),
        ("correct", "client", False, False),
        ("correct", "token", False, False),
    ]
    (root / "ground_truth.json").write_text(json.dumps({"targets": {"access_token_client_secret_wrong_401": "client"}}))
    assert target_fn_for_root(root)("access_token_client_secret_wrong_401", "client")
    _, _, sq = load(root, tmp_path / "lab2")
    assert sq.filter(pl.col("anomaly_service"))["service"].to_list() == ["client"]
    (root / "ground_truth.json").write_text("[1, 2]")
    with pytest.raises(DataLayoutError, match="ground_truth.json"):
        target_fn_for_root(root)


def test_generated_v2_matches_its_ground_truth(generated_v2: Path, tmp_path: Path) -> None:
    """Every physical line is accounted for, and event times fall inside their test's window."""
    gt = json.loads((generated_v2 / "ground_truth.json").read_text())
    summary = load_runs(generated_v2, make_selection(trim_init_lines=0), tmp_path)
    ev = pl.read_parquet(tmp_path / "events.parquet")
    expected_lines = sum(n for r in gt["runs"] for t in r["tests"] for n in t["lines"].values())
    assert summary.lines == expected_lines
    assert summary.malformed_lines == summary.undecodable_lines == 0
    assert summary.events + summary.continuation_lines + summary.orphan_continuation_lines == expected_lines
    windows = pl.DataFrame(
        [(r["run"], t["test_case"], t["start_ms"], t["end_ms"]) for r in gt["runs"] for t in r["tests"]],
        schema=["run", "test_case", "start_ms", "end_ms"], orient="row",
    )
    span = ev.group_by("run", "test_case").agg(
        lo=pl.col("timestamp").min().dt.epoch("ms"), hi=pl.col("timestamp").max().dt.epoch("ms")
    ).join(windows, on=["run", "test_case"])
    assert span.height == windows.height
    # a request started before a test's end may log a few ms after it; a wrong date is off by a day
    assert (span["lo"] >= span["start_ms"]).all() and (span["hi"] < span["end_ms"] + 5_000).all()
    crossing = [r["run"] for r in gt["runs"] if r["crosses_midnight"]]
    assert crossing and ev.filter(pl.col("run") == crossing[0])["timestamp"].dt.date().n_unique() == 2
    sq = pl.read_parquet(tmp_path / "sequences.parquet")
    truth = {(r["run"], t["test_case"]): t["target_service"] for r in gt["runs"] for t in r["tests"]}
    for run, case, svc, label in sq.select("run", "test_case", "service", "anomaly_service").iter_rows():
        assert label == (truth[(run, case)] == svc)


def test_generated_v1_trimming_removes_startup_lines(generated_v1: Path, tmp_path: Path) -> None:
    untrimmed = load_runs(generated_v1, make_selection(trim_init_lines=0), tmp_path / "u")
    trimmed = load_runs(generated_v1, make_selection(trim_init_lines=100), tmp_path / "t")
    assert untrimmed.layouts == {"v1": 2} and untrimmed.test_cases_loaded == 2 * 54
    assert trimmed.events_trimmed > 0 and trimmed.selection["trim_mode"] == "lines"
    assert trimmed.events_written == untrimmed.events_written - trimmed.events_trimmed
    # v1: the start-up block is in `correct` only (its order is fixed), where it leaked the label
    _check_startup_trim(generated_v1, tmp_path, {r.run: "correct" for r in discover_runs(generated_v1)})


def test_cli_load_writes_files_and_prints_the_summary(
    generated_v2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = lo2_main(["load", "--root", str(generated_v2), "--output-dir", str(tmp_path), "--runs", "2",
                   "--errors-per-run", "1", "--service-types", "token", "user", "--seed", "3", "--head", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "events written" in out and "downsampling occurred" in out and "sequences.parquet (first 2" in out
    assert (tmp_path / "events.parquet").exists() and (tmp_path / "sequences.parquet").exists()
    sq = pl.read_parquet(tmp_path / "sequences.parquet")
    assert set(sq["service"]) == {"token", "user"} and sq["run"].n_unique() == 2
    assert sq.height == 2 * 2 * 2  # 2 runs x (correct + 1 error) x 2 services
    rc = lo2_main(["load", "--root", str(generated_v2), "--output-dir", str(tmp_path / "seq"), "--save-parquet",
                   "--runs", "1", "--head", "0"])
    assert rc == 0 and not (tmp_path / "seq" / "events.parquet").exists()
    assert (tmp_path / "seq" / "sequences.parquet").exists()
