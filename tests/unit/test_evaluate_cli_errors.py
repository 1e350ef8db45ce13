"""`lo2 evaluate` rejects bad flag values in one line with exit 2, before reading or fitting anything.

Every case points --input at a folder that does not exist: a value that slipped through the checks
would then fail with "events Parquet not found" (or, before the fix, a ValueError traceback, or an
IsolationForest fit that failed only after featurizing and still exited 0), never with the message
asserted here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from batch.commands import evaluate as evaluate_cmd
from lo2.cli import main


def _run(tmp_path: Path, *flags: str) -> int:
    return main(["evaluate", "--input", str(tmp_path / "no-events"), "--models", "if", "--seeds", "1",
                 "--out", str(tmp_path / "out"), "--no-report", *flags])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--report-precision-at", "abc"), "argument --report-precision-at: expected comma-separated integers"),
        (("--report-precision-at", "10,-1"), "argument --report-precision-at: expected comma-separated integers"),
        (("--report-fp-alpha", "xyz"), "argument --report-fp-alpha: expected comma-separated fractions"),
        (("--report-fp-alpha", "1.5"), "argument --report-fp-alpha: expected comma-separated fractions"),
        (("--report-fp-alpha", "nan"), "argument --report-fp-alpha: expected comma-separated fractions"),
    ],
)
def test_bad_report_values_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        _run(tmp_path, *flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--if-max-samples", "abc"), "--if-max-samples 'abc': expected 'auto' or a positive integer"),
        (("--if-max-samples", "0"), "--if-max-samples '0': expected 'auto' or a positive integer"),
        (("--if-n-estimators", "0"), "--if-n-estimators 0: expected >= 1"),
        (("--if-contamination", "0.9"), "--if-contamination 0.9: expected 'auto' or a fraction in (0, 0.5]"),
        (("--if-contamination", "lots"), "--if-contamination 'lots': expected 'auto' or a fraction in (0, 0.5]"),
    ],
)
def test_bad_isolation_forest_values_stop_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], message: str
) -> None:
    """The same messages as `lo2 train` (one shared parser), and nothing read or written."""
    assert _run(tmp_path, *flags) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert f"evaluate failed: {message}" in out
    assert "not found" not in out and "Traceback" not in out
    assert not (tmp_path / "out").exists()


def test_train_rejects_the_same_values_with_the_same_message() -> None:
    """`lo2 train` and `lo2 evaluate` share one parser: same values refused, same text."""
    from batch.commands import train as train_cmd
    from batch.commands._flags import if_params
    from shared.errors import ConfigError

    assert train_cmd._if_params is if_params
    bad = argparse.Namespace(if_contamination="0.9", if_max_samples="auto", if_n_estimators=200)
    with pytest.raises(ConfigError, match=r"--if-contamination 0\.9: expected 'auto' or a fraction in \(0, 0\.5\]"):
        if_params(bad)


def test_good_values_parse_and_unset_if_flags_keep_the_registry_defaults() -> None:
    parser = argparse.ArgumentParser()
    evaluate_cmd.configure(parser)
    args = parser.parse_args(["--report-precision-at", "0,5,20", "--report-fp-alpha", "0.01,0"])
    assert args.report_precision_at == (5, 20) and args.report_fp_alpha == (0.01,)
    assert evaluate_cmd._model_params(args) == {}
    args = parser.parse_args(["--if-max-samples", "64", "--if-contamination", "0.1"])
    assert evaluate_cmd._model_params(args) == {"if": {"max_samples": 64, "contamination": 0.1}}
    defaults = parser.parse_args([])
    assert defaults.report_precision_at == (10,) and defaults.report_fp_alpha == (0.01,)
