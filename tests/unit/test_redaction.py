"""Redaction guarantees: no planted secret survives into anything lo2 writes for people.

The end-to-end test plants known secrets (Basic credentials, bearer and refresh tokens,
authorization codes, client secrets, passwords in JSON and escaped-JSON bodies, light-4j messages
that echo passwords/codes) as ERROR lines into every generated service log, then runs the real
pipeline: ``lo2 load`` -> training (bundles saved) -> ``lo2 explain`` from the saved bundles ->
``lo2 scan`` with previews.  Every file written by explain and scan is searched for every secret
value.  A marker next to each secret proves the planted lines really reached the evidence lists,
so the test fails if redaction breaks (not only if the lines never got there).
"""

from __future__ import annotations

import doctest
import json
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

import shared.redaction
from lo2.cli import main
from shared.redaction import redact

#: kind -> (marker, secret value, planted message).  Secret values are unique strings to grep for.
PLANTED: dict[str, tuple[str, str, str]] = {
    "basic": ("PLANTMARKbasic", "UGxhbnRlZENsaWVudDpQbGFudGVkU2VjcmV0OTk=",
              'PLANTMARKbasic validate( "Basic UGxhbnRlZENsaWVudDpQbGFudGVkU2VjcmV0OTk=", authorization)'),
    "bearer": ("PLANTMARKbearer", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwbGFudGVkIn0.c2lnUGxhbnRlZDQy",
               "PLANTMARKbearer Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJwbGFudGVkIn0.c2lnUGxhbnRlZDQy"),
    "bearer_opaque": ("PLANTMARKopaque", "opaqueBearerTok3nXYZ",
                      "PLANTMARKopaque header Bearer opaqueBearerTok3nXYZ rejected"),
    "refresh": ("PLANTMARKrefresh", "5ec7e7a0-dead-beef-9999-planted00001",
                "PLANTMARKrefresh refreshToken = 5ec7e7a0-dead-beef-9999-planted00001 scope = null"),
    "auth_code": ("PLANTMARKcode", "PlantedAuthCode77xQ",
                  "PLANTMARKcode code = PlantedAuthCode77xQ redirectUri = http://localhost:8080/authorization"),
    "client_secret": ("PLANTMARKcsecret", "PlantedClientSecret55",
                      "PLANTMARKcsecret grant_type=client_credentials&client_id=c1&client_secret=PlantedClientSecret55"),
    "json_password": ("PLANTMARKjson", "PlantedJsonPassw0rd",
                      'PLANTMARKjson requestBody {"userId":"u1","password":"PlantedJsonPassw0rd","passwordConfirm":"PlantedJsonPassw0rd"}'),
    "escaped_json": ("PLANTMARKescaped", "PlantedEscapedPw88",
                     'PLANTMARKescaped body "{\\"userId\\":\\"u2\\",\\"newPassword\\":\\"PlantedEscapedPw88\\"}"'),
    "status_password": ("PLANTMARKstatus", "PlantedStatusPw31",
                        "PLANTMARKstatus Password PlantedStatusPw31 and PasswordConfirm PlantedStatusPw31 are not matched."),
    "status_code": ("PLANTMARKinvalid", "PlantedInvalidCode61",
                    "PLANTMARKinvalid Invalid Authorization Code PlantedInvalidCode61."),
    # forms found by exploratory testing (they leaked into explain's FP/FN lists and live evidence)
    "validate_password": ("PLANTMARKvalpw", "PlantedValidatePw42",
                          'PLANTMARKvalpw validate( "PlantedValidatePw42", {"password":"PlantedValidatePw42",'
                          '"newPassword":"x"}, requestBody.password)'),
    "validate_refresh": ("PLANTMARKvalrt", "7a1c0de5-0000-4c08-9e15-planted00002",
                         'PLANTMARKvalrt validate( "7a1c0de5-0000-4c08-9e15-planted00002", '
                         '"7a1c0de5-0000-4c08-9e15-planted00002", refreshToken)'),
    "refresh_path": ("PLANTMARKpath", "9b2d1ef6-0000-4c08-9e15-planted00003",
                     "PLANTMARKpath path = /oauth2/refresh_token/9b2d1ef6-0000-4c08-9e15-planted00003, base path is set to: null"),
    "refresh_not_found": ("PLANTMARKrtnf", "0c3e2f07-0000-4c08-9e15-planted00004",
                          'PLANTMARKrtnf {"statusCode":404,"code":"ERR12029","message":"REFRESH_TOKEN_NOT_FOUND",'
                          '"description":"Refresh token 0c3e2f07-0000-4c08-9e15-planted00004 is not found.","severity":"ERROR"}'),
    "basic_credentials": ("PLANTMARKbadbasic", "UGxhbnRlZEJhZEJhc2ljNw==",
                          'PLANTMARKbadbasic {"description":"Invalid Basic credentials UGxhbnRlZEJhZEJhc2ljNw==."}'),
}
SECRETS = {kind: secret for kind, (_, secret, _) in PLANTED.items()}
TIME_RE = re.compile(r"^(\d{2}:\d{2}:\d{2}\.\d{3}) ")


def test_doctests_of_redaction_pass() -> None:
    result = doctest.testmod(shared.redaction)
    assert result.attempted >= 6 and result.failed == 0


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_each_planted_secret_is_masked_and_the_marker_kept(kind: str) -> None:
    marker, secret, message = PLANTED[kind]
    line = f"16:29:40.245 [XNIO-1 task-4]  Hb3kD9uVnR1yLq5Ze_TxWg ERROR c.n.o.t.h.Oauth2TokenPostHandler handleRequest - {message}"
    out = redact(line)
    assert secret not in out
    assert marker in out and "***" in out
    assert redact(out) == out  # idempotent: redacting twice changes nothing


#: (secret kind, where the generator prints it in plain view).  Every value found this way must
#: be gone from every line after redaction, whatever other context the line prints it in.
SECRET_SOURCES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("refresh token", re.compile(r"refreshToken = ([0-9a-f-]{36})")),
    ("refresh token", re.compile(r"RefreshTokenMapStore \w+ - \w+:([0-9a-f-]{36})")),
    ("password", re.compile(r'"(?:password|newPassword|passwordConfirm|newPasswordConfirm)":"([^"]{6,})"')),
    ("authorization code", re.compile(r"\bcode = ([A-Za-z0-9_-]{10,})")),
    ("basic credential", re.compile(r"Basic (?!authentication\b|credentials\b)([A-Za-z0-9+/]{12,}=*)")),
    ("code verifier", re.compile(r'codeVerifier = ([^"\s]{20,})')),
)


TOKEN_RE = re.compile(r"[A-Za-z0-9_~.+/=-]+")


def test_no_secret_of_generated_logs_survives_in_any_line(tmp_path: Path) -> None:
    """Every error case once: find each secret where the logs show it plainly, then check that no
    redacted line (in any context: validators, REST paths, status messages) still holds it."""
    from batch.generate import GenerateConfig, generate
    from shared.catalog import ERROR_CASE_NAMES

    generate(GenerateConfig(out=tmp_path, runs=1, errors_per_run=len(ERROR_CASE_NAMES), seed=3, layout="v2"))
    lines = [ln for f in sorted(tmp_path.rglob("*.log")) for ln in f.read_text(encoding="utf-8").splitlines()]
    secrets: dict[str, str] = {}
    for line in lines:
        for kind, pattern in SECRET_SOURCES:
            for value in pattern.findall(line):
                secrets[value] = kind
    found_kinds = set(secrets.values())
    assert found_kinds == {kind for kind, _ in SECRET_SOURCES}, f"the generator printed no {set(k for k, _ in SECRET_SOURCES) - found_kinds}"
    leaks = []
    for out in map(redact, lines):
        # every secret is one token of these characters, possibly inside a path or before a "."
        for token in TOKEN_RE.findall(out):
            hits = {token, token.rstrip("."), *token.split("/")} & secrets.keys()
            if hits:
                leaks.append((secrets[hits.pop()], out))
    assert not leaks, f"{len(leaks)} lines still hold a secret, e.g. {leaks[:3]}"


def test_redaction_keeps_ordinary_text(real_token_sample: Path) -> None:
    keep = [
        "normalised = /oauth2/token",
        "Config loaded from externalized folder for primary.jks in /config",
        "Incorrect password.",
        "authorization_code_invalid_password_401",
        "Unable to load config from externalized folder for status.yml",
    ]
    for text in keep:
        assert redact(text) == text
    # the real sample: every Basic credential and refresh token is masked, the rest reads the same
    text = real_token_sample.read_text(encoding="utf-8")
    basics = set(re.findall(r"Basic ([A-Za-z0-9+/=]{20,})", text))
    refreshes = set(re.findall(r"refreshToken = ([0-9a-f-]{36})", text))
    assert basics and refreshes
    redacted = redact(text)
    assert not any(b in redacted for b in basics)
    assert not any(r in redacted for r in refreshes)
    assert redacted.count("\n") == text.count("\n")


# ------------------------------------------------------------------------------------------------
# End to end: generated logs with planted secrets -> load -> train -> explain -> scan
# ------------------------------------------------------------------------------------------------
def _plant(log: Path, offset: int) -> None:
    """Insert the planted ERROR lines after the start-up lines (the loader trims the first 100)."""
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    events = [i for i, line in enumerate(lines) if TIME_RE.match(line)]
    if not events:
        return
    at = events[min(110, len(events) - 1)]
    stamp = TIME_RE.match(lines[at]).group(1)  # type: ignore[union-attr]
    kinds = sorted(PLANTED)
    kinds = kinds[offset % len(kinds) :] + kinds[: offset % len(kinds)]
    planted = [
        f"{stamp} [XNIO-1 task-9]  PlantedCorrelationId0001 ERROR c.n.o.t.h.Oauth2TokenPostHandler handleRequest - "
        f"{PLANTED[k][2]}\n"
        for k in kinds
    ]
    log.write_text("".join(lines[:at] + planted + lines[at:]), encoding="utf-8")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from batch.generate import GenerateConfig, generate
    from batch.train import TrainConfig, train

    base = tmp_path_factory.mktemp("redaction")
    runs = base / "runs"
    generate(GenerateConfig(out=runs, runs=5, errors_per_run=3, rate=0.5, seed=11, aux_files=False))
    (runs / "ground_truth.json").unlink(missing_ok=True)  # the loader takes targets from the catalog
    logs = sorted(runs.rglob("light-oauth2-oauth2-*-1.log"))
    assert logs, "the generator wrote no service logs"
    for i, log in enumerate(logs):
        _plant(log, i)
    parquet = base / "parquet"
    assert main(["load", "--root", str(runs), "--output-dir", str(parquet)]) == 0
    events = pl.read_parquet(parquet / "events.parquet")
    assert events.filter(pl.col("message").str.contains("PLANTMARK")).height >= len(PLANTED)
    models = base / "models"
    result = train(events, TrainConfig(models=("if", "event_lr_words"), seed=3))
    for key, bundle in result.bundles.items():
        bundle.save(models / f"{key}-test")
    out = base / "explain"
    code = main([
        "explain", "--root", str(parquet), "--model-dir", str(models), "--load-model", "if-test",
        "--sup-models", "event_lr_words", "--out", str(out), "--nn-source", "all", "--shap-sample", "40",
        "--max-list-entries", "0", "--evidence-lines", "5",
    ])
    assert code == 0
    scan_md = base / "scan.md"
    assert main(["scan", "--explain-dir", str(out), "--output", str(scan_md),
                 "--max-false-positives", "50", "--top-list-items", "50"]) == 0
    return {"out": out, "scan": scan_md, "models": models, "parquet": parquet}


def _artefact_text(paths: list[Path]) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", errors="replace") for p in paths)


def test_no_planted_secret_survives_in_any_artefact(pipeline: dict[str, Path]) -> None:
    files = sorted(p for p in pipeline["out"].iterdir() if p.is_file()) + [pipeline["scan"]]
    files.append(pipeline["parquet"] / "load_summary.json")
    text = _artefact_text(files)
    leaked = {kind: secret for kind, secret in SECRETS.items() if secret in text}
    assert not leaked, f"secrets leaked into artefacts: {leaked}"
    # the planted lines did reach the evidence of the FP/FN lists: redaction was really exercised
    lists = _artefact_text(sorted(pipeline["out"].glob("*_false_*.jsonl")))
    seen = {kind for kind, (marker, _, _) in PLANTED.items() if marker in lists}
    assert len(seen) >= len(PLANTED) - 2, f"planted lines missing from evidence: {sorted(set(PLANTED) - seen)}"
    assert "***" in lists


def test_explain_artefacts_are_complete_and_scan_agrees(pipeline: dict[str, Path]) -> None:
    out = pipeline["out"]
    manifest = json.loads((out / "explain_manifest.json").read_text())
    assert manifest["models"] == ["if", "event_lr_words"]
    assert manifest["bundles"] == {"if": "if-test", "event_lr_words": "event_lr_words-test"}
    for model in manifest["models"]:
        for name in (f"shap_summary_{model}.png", f"shap_bar_{model}.png", f"{model}_top_features.csv",
                     f"{model}_top_features.json", f"{model}_nn_mapping.csv", f"{model}_false_positives.jsonl",
                     f"{model}_false_negatives.jsonl", f"{model}_per_error_case.csv", f"{model}_metrics.json"):
            assert (out / name).is_file(), name
        assert (out / f"shap_summary_{model}.png").read_bytes()[:4] == b"\x89PNG"
        info = manifest["per_model"][model]
        entries = [json.loads(x) for x in (out / f"{model}_false_negatives.jsonl").read_text().splitlines() if x]
        assert len(entries) == info["false_negatives"]["total"]  # --max-list-entries 0 = all
        for e in entries:
            assert e["is_anomaly"] and e["score"] < e["threshold"]
            assert len(e["evidence"]) <= 5 and len(e["top_reasons"]) <= 5
            assert set(e) >= {"seq_id", "run", "service", "test_case", "score", "threshold", "top_reasons", "evidence"}
        fps = [json.loads(x) for x in (out / f"{model}_false_positives.jsonl").read_text().splitlines() if x]
        assert all(not e["is_anomaly"] and e["score"] >= e["threshold"] for e in fps)
        metrics = json.loads((out / f"{model}_metrics.json").read_text())
        assert metrics["canary"] is not None  # the length/duration baseline sits next to every result
    assert manifest["per_model"]["if"]["method"] == "tree_shap"
    assert manifest["per_model"]["event_lr_words"]["method"] == "linear_shap"
    # nearest normals are training `correct` sequences, named by seq_id
    nn = pl.read_csv(out / "if_nn_mapping.csv")
    events = pl.read_parquet(pipeline["parquet"] / "events.parquet")
    correct_ids = set(events.filter(pl.col("test_case") == "correct")["seq_id"].unique().to_list())
    assert nn.height == 0 or set(nn["normal_seq_id"].to_list()) <= correct_ids
    md = pipeline["scan"].read_text()
    assert "Required artefacts: all present" in md
    shutil.rmtree(pipeline["models"] / "if-test" / "detectors", ignore_errors=False)
    # a broken bundle is a clear error, never a silent retrain
    assert main(["explain", "--root", str(pipeline["parquet"]), "--model-dir", str(pipeline["models"]),
                 "--load-model", "if-test", "--out", str(out.parent / "x")]) == 2
