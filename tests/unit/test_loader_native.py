"""The loader's compiled tokenizer (batch._native) gives exactly what its Polars path gives.

Parity is the contract of the native path: the same events and sequences frames, the same per-file
counters and the same bad-input examples, for every trim mode, on the real token sample, on the
other (non-log) sample files, on generated batches built to hit the edges (bad bytes, CRs, blank,
malformed and continuation lines, orphans, empty files, missing final newlines, start-up blocks,
midnight roll-over), and through ``load_runs`` on a generated dataset (Parquet files compared).

``test_native_tokenizer_is_built_where_cargo_is`` makes a machine with Rust fail when the extension
was not built, so ``make test`` on CI really runs these parity tests instead of skipping them.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from batch import native
from batch.loader import FileTask, load_runs, make_selection, parse_batch
from shared.errors import ConfigError
from tests.unit.test_loader_parity import log_line

needs_native = pytest.mark.skipif(not native.available(), reason=f"batch._native not built: {native.IMPORT_ERROR}")
TRIMS = [("none", 0), ("startup", 0), ("lines", 0), ("lines", 1), ("lines", 3)]


def test_native_tokenizer_is_built_where_cargo_is() -> None:
    if shutil.which("cargo") is None:
        pytest.skip("no cargo on PATH: the extension is optional and the Polars path is used")
    assert native.available(), (
        f"cargo is installed but batch._native does not import ({native.IMPORT_ERROR}); "
        "run `pip install -e .` (or `make setup`) again to build it"
    )


def test_engine_setting_is_checked() -> None:
    with pytest.raises(ConfigError, match="loader_engine"):
        native.resolve("fast")
    assert native.resolve("polars") == "polars"
    assert native.resolve("auto") == ("native" if native.available() else "polars")


def _both(tasks: list[FileTask], datas: list[bytes], trim: tuple[str, int]) -> None:
    mode, n = trim
    a = parse_batch(tasks, datas, n, trim_mode=mode, engine="polars")  # type: ignore[arg-type]
    b = parse_batch(tasks, datas, n, trim_mode=mode, engine="native")  # type: ignore[arg-type]
    assert_frame_equal(a.events, b.events)
    assert_frame_equal(a.sequences, b.sequences)
    assert [asdict(s) for s in a.stats] == [asdict(s) for s in b.stats]
    assert a.problems == b.problems


def _task(i: int, epoch: int, name: str = "gen") -> FileTask:
    return FileTask(Path(f"{name}-{i}.log"), "LO2_run_x", epoch, "correct" if i % 2 else "err", "token", i % 3 == 0)


@needs_native
@pytest.mark.parametrize("trim", TRIMS)
def test_real_samples_parse_the_same(samples_dir: Path, real_token_sample: Path, trim: tuple[str, int]) -> None:
    # the real token log plus every other sample file (JSON, CSV: all orphan/continuation lines)
    paths = [real_token_sample, *sorted(p for p in samples_dir.rglob("*") if p.is_file() and p != real_token_sample)]
    datas = [p.read_bytes() for p in paths]
    tasks = [_task(i, 1_719_592_986, p.name) for i, p in enumerate(paths)]
    _both(tasks, datas, trim)


_THREADS = ["main", "XNIO-1 task-3", "hz._hzInstance_1_dev.partition-operation.thread-2",
            "hz._hzInstance_1_dev.generic-operation.thread-1", "hz.main", ""]
_TIMES = ["23:59:59.998", "00:00:00.001", "12:00:00.000", "11:59:59.999", "00:00:00.000", "23:59:59.999"]
_OTHER = st.sampled_from(["\tat com.networknt.Foo.bar(Foo.java:1)", "Caused by: x", "", "   ", "\t", "\x0b\x0c",
                          "12:00:00.000 garbage", "12:00:00.000 [t] oops", "12:00:00.00", "]", "- - -", "é ] ü",
                          # impossible times: malformed, not events (hours 00-23, minutes/seconds 00-59)
                          "99:99:99.999 [XNIO-1 task-1]  Ab3dE-1 DEBUG c.n.o.t.h.X m - msg",
                          "24:00:00.000 [main]   INFO  c.n.X m - msg", "23:60:00.000 [XNIO-1 task-3]   DEBUG c.n.X m - x",
                          "19:59:60.000 [main]   INFO  c.n.X m - msg"])
_BAD = st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80\x80"])
_EOL = st.sampled_from(["\n", "\r\n", "\r\r\n"])


@st.composite
def _event(draw: st.DrawFn) -> str:
    cid = draw(st.sampled_from(["  Qm7rT2xWZ0aKc4Ne-P9sLw ", "   ", " DEBUG ", "  "]))
    level = draw(st.sampled_from(["DEBUG", "INFO ", "WARN ", "ERROR"]))
    return f"{draw(st.sampled_from(_TIMES))} [{draw(st.sampled_from(_THREADS))}]{cid}{level} c.n.X m - msg {draw(st.text(max_size=6))}"


@st.composite
def _file(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.one_of(_event(), _event(), _OTHER, log_line()), max_size=14))
    eols = [draw(_EOL) for _ in lines]
    text = "".join(f"{line}{eol}" for line, eol in zip(lines, eols, strict=True))
    data = text.encode("utf-8", errors="surrogatepass")
    if data and draw(st.booleans()):
        data = data[:-1]  # no final newline
    for _ in range(draw(st.integers(0, 2))):  # bad bytes anywhere, also inside a multi-byte character
        pos = draw(st.integers(0, len(data)))
        data = data[:pos] + draw(_BAD) + data[pos:]
    return data


@needs_native
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_file(), min_size=1, max_size=5),
    st.sampled_from([1_700_006_400, 1_700_006_399, 1_700_049_600, 1_719_592_986, 1_739_743_201, 1_700_092_799]),
    st.sampled_from(TRIMS),
)
def test_generated_batches_parse_the_same(datas: list[bytes], epoch: int, trim: tuple[str, int]) -> None:
    _both([_task(i, epoch) for i in range(len(datas))], datas, trim)


@needs_native
def test_startup_block_and_rollover_parse_the_same() -> None:
    head = ["23:59:58.000 [main]   INFO  c.n.s.Server start - starting", "JVM banner", "",
            "23:59:59.000 [hz._hzInstance_1_dev.generic-operation.thread-1]   INFO  c.h.X join - joined"]
    traffic = ["00:00:00.500 [XNIO-1 task-1]  abc DEBUG c.n.X handle - request", "\tat frame", "",
               "00:00:01.000 [main]   INFO  c.n.s.Server after - late main"]
    files = [head + traffic, head, traffic, ["orphan first", *head, *traffic], []]
    datas = [("\n".join(f) + "\n").encode() if f else b"" for f in files]
    for epoch in (1_700_006_400 - 5, 1_700_006_400 + 5):  # run start just before / after midnight
        for trim in TRIMS:
            _both([_task(i, epoch) for i in range(len(datas))], datas, trim)
    res = parse_batch([_task(0, 1_700_006_400)], datas[:1], trim_mode="startup", engine="native")
    assert (res.stats[0].lines_trimmed, res.stats[0].events_trimmed) == (4, 2)
    assert res.events["line_no"].to_list() == [5, 8]
    assert res.events["stack"].to_list() == ["\tat frame", None]
    # 00:00:00.500 after a run start 23:59:55 is the next day
    assert res.events["timestamp"].dt.epoch("ms").to_list() == [1_700_006_400_500, 1_700_006_401_000]


@needs_native
def test_load_runs_writes_the_same_parquet(generated_v2: Path, tmp_path: Path) -> None:
    sel = make_selection(runs=2, errors_per_run=3)
    outs = {}
    for engine in ("polars", "native"):
        summary = load_runs(generated_v2, sel, tmp_path / engine, batch_bytes=1 << 20, engine=engine)  # type: ignore[arg-type]
        d = summary.to_dict()
        d.pop("seconds"), d.pop("outputs")
        outs[engine] = d
        assert pq.read_schema(tmp_path / engine / "events.parquet").names[0] == "run"
    assert outs["polars"] == outs["native"]
    for name in ("events.parquet", "sequences.parquet"):
        assert_frame_equal(pl.read_parquet(tmp_path / "polars" / name), pl.read_parquet(tmp_path / "native" / name))
    assert pq.read_schema(tmp_path / "native" / "events.parquet") == pq.read_schema(tmp_path / "polars" / "events.parquet")
