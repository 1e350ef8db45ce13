"""The evaluation report: one Markdown and one HTML page with the tables and plots people look at.

Why these plots: ROC and PR curves show ranking quality over every threshold (PR next to its chance
level, the anomaly share, because LO2 test sets are imbalanced); the score histograms show how far
normal and anomalous sequences are apart and where the calibrated threshold cuts; the per-service
ROC-AUC heatmap shows which services a model actually detects errors in; per-error-case recall shows
which of the 53 error cases are caught at the threshold.  The leakage canary is drawn and tabulated
next to every model: a result the canary also reaches proves nothing.

Plots are written headless (matplotlib's Agg backend); titles name the models and the label.
Free text (failure messages, split notes) passes through :func:`shared.redaction.redact`.
"""

from __future__ import annotations

import html
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from batch.evaluate import (
    ALL,
    CANARY,
    POOLED_GROUPS,
    TARGETED,
    EvaluationResult,
    MetricSummary,
    ResultRow,
    ScoreSet,
)
from shared import detection_metrics as dm
from shared.redaction import redact

log = logging.getLogger(__name__)

LABEL_TITLES = {
    "anomaly": "paper label (every sequence of an error test case)",
    "anomaly_service": "service-aware label (only the service the error targets)",
}
LABEL_SHORT = {"anomaly": "paper", "anomaly_service": "service"}


@dataclass
class ReportPaths:
    markdown: Path
    html: Path
    figures: list[Path] = field(default_factory=list)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _model_title(model: str) -> str:
    """Registry keys are what users type; the two special models get readable names."""
    return {CANARY: "canary (length/duration only)", "if": "IsolationForest"}.get(model, model)


def _style(model: str, index: int) -> dict[str, Any]:
    """Distinct colours for up to 20 models (tab20), solid then dash-dotted; the canary black dashed."""
    if model == CANARY:
        return {"color": "black", "linestyle": "--", "linewidth": 1.6}
    plt = _plt()
    return {
        "color": plt.get_cmap("tab20")(index % 20),
        "linestyle": "-" if index < 10 else "-.",
        "linewidth": 1.8,
    }


def _scores_by_label(result: EvaluationResult, label: str) -> list[ScoreSet]:
    order = {m: i for i, m in enumerate(result.config.all_models)}
    sets = [s for s in result.scores if s.label == label]
    return sorted(sets, key=lambda s: order.get(s.model, 99))


def _roc_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def _pr_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, s)
    return recall, precision


def plot_curves(result: EvaluationResult, label: str, out: Path) -> Path | None:
    """ROC and PR curves of every model (all services pooled, first seed) for one label."""
    sets = [s for s in _scores_by_label(result, label) if 0 < s.y.sum() < s.y.size]
    if not sets:
        return None
    plt = _plt()
    many = len(sets) > 6
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(16 if many else 13, 6 if many else 5.5))
    for i, s in enumerate(sets):
        auc = float(dm.roc_auc(s.y, s.scores))  # of this seed, the one drawn (the table has the mean)
        ap = float(dm.pr_auc(s.y, s.scores))
        fpr, tpr = _roc_points(s.y, s.scores)
        ax_roc.plot(fpr, tpr, label=f"{_model_title(s.model)}  AUC {auc:.3f}", **_style(s.model, i))
        rec, prec = _pr_points(s.y, s.scores)
        ax_pr.step(rec, prec, where="post", label=f"{_model_title(s.model)}  AP {ap:.3f}", **_style(s.model, i))
    chance = float(sets[0].y.mean())
    ax_roc.plot([0, 1], [0, 1], color="black", linewidth=0.8, alpha=0.4)
    ax_pr.axhline(chance, color="black", linewidth=0.8, alpha=0.4, label=f"chance (anomaly share {chance:.2f})")
    ax_roc.set(xlabel="false-positive rate", ylabel="true-positive rate (recall)", title="ROC")
    ax_pr.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
        if many:  # a legend inside would hide the curves
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        else:
            ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
    fig.suptitle(f"Held-out test runs, seed {sets[0].seed}: {LABEL_TITLES.get(label, label)}")
    fig.tight_layout(rect=(0, 0, 1, 0.95))  # keep the suptitle clear of the axes titles
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_histograms(result: EvaluationResult, label: str, out: Path) -> Path | None:
    """Score histograms, normal vs anomalous test sequences, with the calibrated threshold."""
    sets = _scores_by_label(result, label)
    if not sets:
        return None
    plt = _plt()
    n = len(sets)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, s in zip(axes.ravel(), sets, strict=False):
        lo, hi = float(np.min(s.scores)), float(np.max(s.scores))
        if hi <= lo:
            hi = lo + 1e-9
        bins = np.linspace(lo, hi, 40)
        ax.hist(s.scores[~s.y], bins=bins, alpha=0.6, density=True, label=f"normal (n={int((~s.y).sum())})")
        ax.hist(s.scores[s.y], bins=bins, alpha=0.6, density=True, label=f"anomalous (n={int(s.y.sum())})")
        ax.axvline(s.threshold, color="black", linestyle=":", label="threshold (validation normals)")
        ax.set_title(_model_title(s.model), fontsize=10)
        ax.set_xlabel("anomaly score (higher = more anomalous)")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(f"Test score distributions (seed {sets[0].seed}): {LABEL_TITLES.get(label, label)}")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.6 * rows)))  # room for the suptitle
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_service_heatmap(result: EvaluationResult, label: str, out: Path) -> Path | None:
    """ROC-AUC (mean over seeds) per model × service; targeted services marked with *."""
    models = [m for m in result.config.all_models if any(r.model == m and r.label == label for r in result.rows)]
    services = sorted({r.service for r in result.rows if r.label == label and r.service not in POOLED_GROUPS})
    if not models or not services:
        return None
    grid = np.full((len(models), len(services)), np.nan)
    for r in result.rows:
        if r.label == label and r.service in services and r.model in models:
            grid[models.index(r.model), services.index(r.service)] = r.metrics["roc_auc"].mean
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.3 * len(services) + 3, 0.55 * len(models) + 2))
    im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    for i in range(len(models)):
        for j in range(len(services)):
            v = grid[i, j]
            ax.text(j, i, "n/a" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(services)))
    ax.set_xticklabels([s + ("*" if s in result.targeted_services else "") for s in services], rotation=30)
    ax.set_yticks(range(len(models)))
    ax.set_yticklabels([_model_title(m) for m in models])
    fig.colorbar(im, ax=ax, label="ROC-AUC")
    ax.set_title(f"ROC-AUC per service (* = targeted by a test error case)\n{LABEL_TITLES.get(label, label)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_case_recall(result: EvaluationResult, label: str, out: Path) -> Path | None:
    """Recall at the threshold per error case (rows) and model (columns)."""
    cases = sorted({c.test_case for c in result.cases if c.label == label})
    models = [m for m in result.config.all_models if any(c.model == m and c.label == label for c in result.cases)]
    if not cases or not models:
        return None
    grid = np.full((len(cases), len(models)), np.nan)
    for c in result.cases:
        if c.label == label:
            grid[cases.index(c.test_case), models.index(c.model)] = c.recall.mean
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 * len(models) + 5, 0.28 * len(cases) + 2))
    im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="Blues", aspect="auto")
    if len(cases) * len(models) <= 600:
        for i in range(len(cases)):
            for j in range(len(models)):
                v = grid[i, j]
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if v > 0.6 else "black")
    ax.set_yticks(range(len(cases)))
    ax.set_yticklabels(cases, fontsize=7)
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels([_model_title(m) for m in models], rotation=30, ha="right", fontsize=8)
    fig.colorbar(im, ax=ax, label="recall at threshold")
    ax.set_title(f"Caught share per error case: {LABEL_TITLES.get(label, label)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# --- tables -------------------------------------------------------------------------------------


def _cell(m: MetricSummary | None) -> str:
    return "n/a" if m is None else m.text()


def _main_columns(result: EvaluationResult) -> list[tuple[str, str, bool]]:
    """(header, metric, with canary) for the main table."""
    cfg = result.config
    cols: list[tuple[str, str, bool]] = [("ROC-AUC", "roc_auc", True), ("PR-AUC", "pr_auc", True)]
    cols += [(f"P@{k}", f"precision_at_{k}", False) for k in cfg.precision_at]
    for a in cfg.fp_alphas:
        cols += [(f"FP-rate@{a} (ref)", f"fp_rate_at_{a}", False), (f"false alarms@{a}", f"false_alarm_share_at_{a}", False)]
    cols += [("F1", "f1", False), ("recall", "recall", False), ("alert rate", "alert_rate", False)]
    return cols


def _table_rows(result: EvaluationResult, label: str, service: str) -> tuple[list[str], list[list[str]]]:
    """The main table of one label and pooled group, with the scored test sequences per row.

    Why the counts: with --per-service, a model whose fit failed for some services is scored only on
    the others (e.g. 35 test sequences next to the IsolationForest's 49); without the counts those
    rows looked comparable.  "positives" are the anomalous ones under ``label``.
    """
    header = ["model", "test seqs", "positives"]
    for name, _, canary in _main_columns(result):
        header.append(name)
        if canary:
            header.append(f"canary {name}")
    body = []
    rows: list[ResultRow] = [r for r in result.rows if r.label == label and r.service == service]
    for r in rows:
        line = [_model_title(r.model), str(r.n_test), str(r.n_anomalous)]
        for _, metric, canary in _main_columns(result):
            line.append(_cell(r.metrics.get(metric)))
            if canary:
                line.append(_cell(r.canary.get(metric)))
        body.append(line)
    return header, body


def sizes_note(result: EvaluationResult, label: str, service: str) -> str | None:
    """A warning when the rows of one main table were scored on different test sequences, else None.

    Metrics on different sequence sets (and a canary column from another set than its row) are
    not directly comparable; `lo2 evaluate` prints the same note under its table.
    """
    sizes = {(r.n_test, r.n_anomalous) for r in result.rows if r.label == label and r.service == service}
    if len(sizes) <= 1:
        return None
    return (
        "Rows differ in the number of scored test sequences (test seqs / positives), e.g. where a model's "
        "fit failed for some services (see the failures) and it is scored only on the others: compare "
        "rows of equal size; a canary column comes from the canary row's own sequences."
    )


def _service_table(result: EvaluationResult, label: str) -> tuple[list[str], list[list[str]]]:
    services = sorted({r.service for r in result.rows if r.label == label and r.service not in POOLED_GROUPS})
    header = ["model"] + [s + (" *" if s in result.targeted_services else "") for s in services]
    body = []
    for model in result.config.all_models:
        line = [_model_title(model)]
        found = False
        for s in services:
            try:
                r = result.row(model, label, s)
            except KeyError:
                line.append("n/a")
                continue
            found = True
            line.append(_cell(r.metrics["roc_auc"]))
        if found:
            body.append(line)
    return header, body


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


# --- the page -------------------------------------------------------------------------------------


def _blocks(result: EvaluationResult, figures: dict[tuple[str, str], Path]) -> list[tuple[str, Any]]:
    """The report as a list of (kind, content) blocks rendered to both Markdown and HTML."""
    cfg = result.config
    b: list[tuple[str, Any]] = [("h1", "lo2 evaluation report")]
    split = result.splits[0]
    b.append(
        (
            "p",
            f"Whole runs held out ({cfg.split_order} split by run epoch, fractions "
            f"{'/'.join(str(f) for f in cfg.fractions)}): {len(split.train_runs)} training, "
            f"{len(split.validation_runs)} validation, {len(split.test_runs)} test runs; "
            f"sequences train/validation/test = {result.n_sequences.get('train', 0)}/"
            f"{result.n_sequences.get('validation', 0)}/{result.n_sequences.get('test', 0)}. "
            f"Seeds: {', '.join(map(str, cfg.seeds))} (mean ± sample std). "
            f"Threshold: the {cfg.threshold_quantile:.3g} quantile of validation `correct` scores. "
            f"Feature spec fitted on training runs only (fingerprint {', '.join(result.feature_fingerprints)}).",
        )
    )
    b.append(("p", "Test runs: " + ", ".join(split.test_runs)))
    b.append(
        (
            "p",
            "The canary is a model on sequence length and duration alone. Where a model does not clearly "
            "beat its canary column, it has learnt the length/duration confound of LO2, not the errors. "
            "FP-rate@α (ref) is the LogLead definition: false positives among the top α·N alerts divided by "
            "all normal test sequences; 'false alarms' is the share of the alerts that are false.",
        )
    )
    for note in (n for s in result.splits for n in s.notes):
        b.append(("p", "Split note: " + redact(note)))
    for label in cfg.labels:
        b.append(("h2", f"Label: {LABEL_TITLES.get(label, label)}"))
        b.append(("h3", "All services"))
        b.append(("table", _table_rows(result, label, ALL)))
        if size_note := sizes_note(result, label, ALL):
            b.append(("p", size_note))
        if any(r.label == label and r.service == TARGETED for r in result.rows):
            b.append(("h3", "Services an error case targets (" + ", ".join(result.targeted_services) + ")"))
            b.append(
                (
                    "p",
                    "Pooled over the targeted services only: a service no error case targets is negative "
                    "under the service label by definition, so pooling it in rewards telling services "
                    "apart (which sequence length does), not finding errors.",
                )
            )
            b.append(("table", _table_rows(result, label, TARGETED)))
            if size_note := sizes_note(result, label, TARGETED):
                b.append(("p", size_note))
        b.append(("h3", "ROC-AUC per service (* = targeted by a test error case)"))
        b.append(("table", _service_table(result, label)))
        for kind, title in (
            ("curves", "ROC and precision-recall curves"),
            ("hist", "Score histograms, normal vs anomalous"),
            ("services", "ROC-AUC per model and service"),
            ("cases", "Recall per error case"),
        ):
            if (label, kind) in figures:
                b.append(("img", (title, figures[(label, kind)])))
    if result.failures:
        b.append(("h2", "Failures (evaluation went on without these)"))
        b.append(
            (
                "table",
                (
                    ["model", "label", "seed", "error"],
                    [[f.model, f.label, str(f.seed), redact(f.error)] for f in result.failures],
                ),
            )
        )
    b.append(("h2", "Timings (seconds, all seeds)"))
    b.append(("table", (["step", "seconds"], [[k, f"{v:.2f}"] for k, v in result.timings_s.items()])))
    return b


def _render_md(blocks: list[tuple[str, Any]], base: Path) -> str:
    out = []
    for kind, content in blocks:
        if kind == "h1":
            out.append(f"# {content}")
        elif kind == "h2":
            out.append(f"## {content}")
        elif kind == "h3":
            out.append(f"### {content}")
        elif kind == "p":
            out.append(str(content))
        elif kind == "table":
            out.append(_md_table(*content))
        elif kind == "img":
            title, path = content
            out.append(f"![{title}]({path.relative_to(base).as_posix()})")
    return "\n\n".join(out) + "\n"


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
    "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th:first-child,td:first-child{text-align:left}th{background:#f0f0f0}"
    "img{max-width:100%;border:1px solid #eee;margin:0.5em 0}"
)


def _render_html(blocks: list[tuple[str, Any]], base: Path) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>lo2 evaluation</title><style>{_CSS}</style></head><body>"]
    for kind, content in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{html.escape(str(content))}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(str(content))}</p>")
        elif kind == "table":
            out.append(_html_table(*content))
        elif kind == "img":
            title, path = content
            src = html.escape(path.relative_to(base).as_posix())
            out.append(f"<figure><img src='{src}' alt='{html.escape(title)}'><figcaption>{html.escape(title)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(result: EvaluationResult, out_dir: Path) -> ReportPaths:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    figures: dict[tuple[str, str], Path] = {}
    for label in result.config.labels:
        short = LABEL_SHORT.get(label, label)
        for kind, fn in (
            ("curves", plot_curves),
            ("hist", plot_histograms),
            ("services", plot_service_heatmap),
            ("cases", plot_case_recall),
        ):
            path = fn(result, label, fig_dir / f"{kind}_{short}.png")
            if path is not None:
                figures[(label, kind)] = path
    blocks = _blocks(result, figures)
    md = out_dir / "report.md"
    md.write_text(_render_md(blocks, out_dir))
    page = out_dir / "report.html"
    page.write_text(_render_html(blocks, out_dir))
    log.info("report written to %s (%d figures)", md, len(figures))
    return ReportPaths(md, page, list(figures.values()))
