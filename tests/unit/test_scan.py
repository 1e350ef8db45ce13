"""`lo2 scan`: required artefacts per model, entries (not lines), metrics, previews, --dry-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch.scan import render_markdown, scan
from lo2.cli import main
from shared.errors import ConfigError


def _entry(seq_id: str, secret: str = "") -> str:
    return json.dumps(
        {
            "seq_id": seq_id,
            "service": "token",
            "test_case": "correct",
            "score": 0.71,
            "threshold": 0.6,
            "top_reasons": [{"name": "ERROR handleRequest - ApiException", "contribution": 1.5}],
            "evidence": [f"10:00:00.000 [x]  c DEBUG l m - validate( \"Basic {secret or 'abc'}\", authorization)"],
        }
    )


@pytest.fixture
def explain_dir(tmp_path: Path) -> Path:
    d = tmp_path / "explain"
    d.mkdir()
    manifest = {"models": ["if", "event_lr_words"], "nn_models": ["if"], "bundle": "v1", "split": "abc", "n_heldout": 12}
    (d / "explain_manifest.json").write_text(json.dumps(manifest))
    for model in ("if", "event_lr_words"):
        (d / f"{model}_top_features.csv").write_text(
            "rank,name,feature,mean_abs_contribution\n1,ERROR ApiException,tpl_5,0.9\n2,password=hunter2,tpl_7,0.1\n"
        )
        (d / f"{model}_top_features.json").write_text("[]")
        (d / f"{model}_per_error_case.csv").write_text("test_case,n,caught\n")
        (d / f"{model}_false_negatives.jsonl").write_text("")
    # three FP entries, each a long multi-field line: the reference counted text lines instead
    (d / "if_false_positives.jsonl").write_text("\n".join(_entry(f"s{i}", "U2VjcmV0Q3JlZA==") for i in range(3)) + "\n")
    (d / "event_lr_words_false_positives.jsonl").write_text(_entry("s9") + "\nnot json\n")
    (d / "if_nn_mapping.csv").write_text("anomaly_seq_id,rank,normal_seq_id,distance\n")
    (d / "shap_summary_if.png").write_bytes(b"\x89PNG")
    (d / "shap_bar_if.png").write_bytes(b"\x89PNG")
    (d / "event_lr_words_shap_skipped.txt").write_text("no linear model in bundle")
    (d / "sequence_shap_lr_words_metrics.json").write_text("{}")  # "shap" in a model key is no SHAP file
    (d / "if_metrics.json").write_text(json.dumps({"heldout": {"roc_auc": 0.91, "f1": 0.5}, "canary": {"roc_auc": 0.52}}))
    (d / "broken_metrics.json").write_text("{nope")
    return d


def test_scan_counts_entries_and_finds_required_files(explain_dir: Path) -> None:
    result = scan(explain_dir)
    by_model = {m.model: m for m in result.models}
    assert by_model["if"].false_positives == 3
    assert by_model["if"].missing == []
    lr = by_model["event_lr_words"]
    assert lr.false_positives == 1 and lr.bad_lines == 1
    assert lr.shap_skipped_reason == "no linear model in bundle"
    assert lr.missing == []  # skipped SHAP replaces the plots; no NN mapping expected for it
    assert result.complete
    assert result.shap_by_type == {"csv": 2, "json": 2, "png": 2, "txt": 1}
    assert "sequence_shap_lr_words_metrics.json" not in result.shap_files
    assert result.metrics["if_metrics.json"]["heldout.roc_auc"] == 0.91
    assert "broken_metrics.json" in result.metric_errors


def test_missing_artefacts_are_reported(explain_dir: Path) -> None:
    (explain_dir / "shap_bar_if.png").unlink()
    (explain_dir / "if_nn_mapping.csv").unlink()
    result = scan(explain_dir)
    missing = {m.model: m.missing for m in result.models}["if"]
    assert sorted(missing) == ["if_nn_mapping.csv", "shap_bar_if.png"]
    assert not result.complete
    assert "**2 missing**" in render_markdown(result)


def test_without_manifest_models_come_from_file_names(explain_dir: Path) -> None:
    (explain_dir / "explain_manifest.json").unlink()
    result = scan(explain_dir)
    assert {m.model for m in result.models} == {"if", "event_lr_words"}
    assert result.manifest_error is not None
    assert not result.complete


def test_markdown_previews_are_redacted(explain_dir: Path) -> None:
    md = render_markdown(scan(explain_dir), max_false_positives=2, top_list_items=1)
    assert "### False positive preview" in md and "`s0`" in md and "`s2`" not in md
    assert "U2VjcmV0Q3JlZA==" not in md and "Basic ***" in md
    assert "### Top feature lists" in md and "(first 1 of 2)" in md
    assert "hunter2" not in md
    assert "heldout.roc_auc=0.9100" in md


def test_cli_dry_run_prints_and_output_writes(explain_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scan.md"
    assert main(["scan", "--explain-dir", str(explain_dir), "--output", str(out), "--dry-run"]) == 0
    assert "## LO2 explainability scan" in capsys.readouterr().out
    assert not out.exists()
    assert main(["scan", "--explain-dir", str(explain_dir), "--output", str(out)]) == 0
    assert out.read_text().startswith("## LO2 explainability scan")
    (explain_dir / "shap_bar_if.png").unlink()
    assert main(["scan", "--explain-dir", str(explain_dir), "--strict", "--dry-run"]) == 1
    assert main(["scan", "--explain-dir", str(tmp_path / "nope")]) == 2


def test_scan_of_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope"):
        scan(tmp_path / "nope")


def test_empty_folder_says_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = scan(empty)
    assert not result.complete
    md = render_markdown(result)
    line = next(x for x in md.splitlines() if x.startswith("- Required artefacts:"))
    assert "all present" not in line
    assert "explain_manifest.json is missing" in line and "no model artefacts found" in line
    assert main(["scan", "--explain-dir", str(empty)]) == 0  # without --strict: report only
    assert "explain_manifest.json is missing; no model artefacts found" in capsys.readouterr().out
    assert main(["scan", "--explain-dir", str(empty), "--strict"]) == 1


def test_missing_manifest_is_named_in_required_artefacts(explain_dir: Path) -> None:
    (explain_dir / "explain_manifest.json").unlink()
    line = next(x for x in render_markdown(scan(explain_dir)).splitlines() if x.startswith("- Required artefacts:"))
    # the manifest first, then the per-model files (without nn_models every model needs an NN mapping)
    assert line == "- Required artefacts: **explain_manifest.json is missing; 1 missing**"
