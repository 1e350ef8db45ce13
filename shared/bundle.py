"""Model bundles: a versioned directory with a manifest, the feature spec and the fitted detectors.

Why not a bare pickle (the LogLead demo's ``joblib.dump((model, vectorizer))``): the worker must
know *exactly* what it loads, and a broken or foreign bundle must fail loudly instead of being
silently refitted (the demo's ``--load-model`` retrained on an AttributeError).  A bundle is::

    <model_dir>/<name>/
      manifest.json        schema version, created-at (UTC), code version, model key, sequence
                           policy, feature spec fingerprint, thresholds, metrics, PSI references,
                           SHA-256 of every other file
      feature_spec.json    the fitted feature spec (shared.features.FeatureSpec.to_json)
      detectors/<group>.joblib   one fitted detector per group ("all", or one per service)
      explainer.joblib     optional: the precomputed explainer state (shared.explain)

:func:`load` verifies every checksum, the schema version and the feature spec fingerprint and
raises :class:`~shared.errors.ModelLoadError` on any mismatch; it never fits anything.  The
manifest also carries ``manifest_sha256``, the SHA-256 of its own canonical JSON (every other
key; sorted keys, fixed separators): the file checksums live *in* the manifest, so without it an
edited threshold or feature name would load silently.  The
``current`` pointer under the model folder is a relative symlink swapped atomically
(``os.replace`` of a fresh symlink), so a reader sees the old or the new bundle, never half.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from shared.detectors import Detector
from shared.errors import ConfigError, ModelLoadError, PayloadError

logger = logging.getLogger(__name__)

#: Version of the on-disk layout; bump on any incompatible change and keep a reader for the old.
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
MANIFEST = "manifest.json"
FEATURE_SPEC = "feature_spec.json"
EXPLAINER = "explainer.joblib"
DETECTORS_DIR = "detectors"
#: Manifest key holding the SHA-256 of the manifest's own canonical content (see manifest_digest).
MANIFEST_SHA256 = "manifest_sha256"
#: Name of the pointer to the promoted bundle inside the model folder.
CURRENT = "current"
#: Group name of a model trained on all services together.
ALL = "all"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``manifest`` without its ``manifest_sha256`` key.

    Canonical = sorted keys, ``(",", ":")`` separators, UTF-8 kept as is: the digest depends on
    the content only, so a manifest re-indented or with its keys re-ordered still verifies, while
    any changed value (a threshold digit, a feature name) does not.
    """
    content = {key: value for key, value in manifest.items() if key != MANIFEST_SHA256}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)
    return sha256_text(text)


def code_version() -> dict[str, str]:
    """Package version and git commit of the code that built a bundle ("unknown" outside a checkout)."""
    try:
        package = metadata.version("lo2-stream")
    except metadata.PackageNotFoundError:
        package = "0+unknown"
    root = Path(__file__).resolve().parent.parent
    commit = "unknown"
    if (root / ".git").exists():
        try:
            done = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
            )
            commit = done.stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError) as exc:
            logger.info("git commit unknown for the bundle manifest: %s", exc)
    return {"package": package, "git_commit": commit}


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def encode_feature_spec(spec: Any) -> str:
    """The spec's JSON text (``FeatureSpec.to_json``)."""
    text = spec.to_json()
    if not isinstance(text, str):
        msg = f"feature spec {type(spec).__name__}.to_json() returned {type(text).__name__}, expected str"
        raise TypeError(msg)
    return text


def vocabulary_fingerprint(spec: Any) -> str:
    """The feature code's own fingerprint of the spec (method or attribute; "" when it has none)."""
    value = getattr(spec, "fingerprint", "")
    return str(value() if callable(value) else value)


def decode_feature_spec(text: str, where: Path) -> Any:
    """Rebuild the FeatureSpec; any refusal of the feature code is an incompatible bundle."""
    from shared.errors import Lo2Error
    from shared.features import FeatureSpec

    try:
        return FeatureSpec.from_json(text)
    except (Lo2Error, ValueError, KeyError, TypeError) as exc:
        msg = f"bundle {where}: feature spec is incompatible with this code: {exc}"
        raise ModelLoadError(msg) from exc


@dataclass
class ModelBundle:
    """A trained model ready to score: detectors per group, thresholds, feature spec, metadata.

    ``detectors`` maps a group to a fitted detector: ``{"all": d}`` for one pooled model, or one
    entry per service for per-service models.  ``thresholds`` has the same keys: the alert
    threshold of that group, calibrated as the ``threshold_quantile`` of validation ``correct``
    scores.  ``reference`` holds PSI reference histograms (``scores``: per group, ``features``:
    per top feature) for the drift monitor.
    """

    model_key: str
    input_kind: str
    detectors: dict[str, Detector]
    thresholds: dict[str, float]
    feature_spec: Any
    feature_names: list[str]
    sequence_policy: dict[str, Any]
    threshold_quantile: float
    metrics: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    explainer_state: Any | None = None
    created_at: str = field(default_factory=_utc_now)
    code: dict[str, str] = field(default_factory=code_version)
    path: Path | None = None

    def __post_init__(self) -> None:
        if not self.detectors:
            msg = f"bundle of {self.model_key!r} has no detectors; expected at least one group"
            raise ValueError(msg)
        if set(self.detectors) != set(self.thresholds):
            msg = (
                f"bundle of {self.model_key!r}: detector groups {sorted(self.detectors)} and threshold "
                f"groups {sorted(self.thresholds)} differ"
            )
            raise ValueError(msg)

    # --- identity -------------------------------------------------------------------------

    @property
    def per_service(self) -> bool:
        return set(self.detectors) != {ALL}

    @property
    def name(self) -> str | None:
        return self.path.name if self.path is not None else None

    @property
    def model(self) -> Detector:
        """The pooled detector (or the first service's), for code that expects one model."""
        return self.detectors.get(ALL) or next(iter(self.detectors.values()))

    @property
    def feature_spec_json(self) -> str:
        return encode_feature_spec(self.feature_spec)

    @property
    def feature_fingerprint(self) -> str:
        """SHA-256 of the feature spec JSON: vocabulary, templates, hashing width, names."""
        return sha256_text(self.feature_spec_json)

    def threshold_for(self, service: str | None = None) -> float:
        return self.thresholds[self._group(service)]

    def _group(self, service: str | None) -> str:
        if not self.per_service:
            return ALL
        if service is None or service not in self.detectors:
            msg = (
                f"bundle {self.name or self.model_key} has per-service models for {sorted(self.detectors)}; "
                f"got service {service!r}"
            )
            raise PayloadError("unknown_service", msg)
        return service

    # --- persistence ----------------------------------------------------------------------

    def manifest(self, files: Mapping[str, str]) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "created_at": self.created_at,
            "code_version": self.code,
            "model_key": self.model_key,
            "input_kind": self.input_kind,
            "groups": sorted(self.detectors),
            "per_service": self.per_service,
            "sequence_policy": self.sequence_policy,
            "feature_spec": {
                "file": FEATURE_SPEC,
                "fingerprint": self.feature_fingerprint,
                "vocabulary_fingerprint": vocabulary_fingerprint(self.feature_spec),
                "n_features": len(self.feature_names),
                "feature_names": self.feature_names,
            },
            "thresholds": self.thresholds,
            "threshold_quantile": self.threshold_quantile,
            "metrics": self.metrics,
            "reference": self.reference,
            "training": self.training,
            "files": dict(sorted(files.items())),
        }

    def save(self, directory: Path) -> Path:
        """Write the bundle to ``directory`` (must not exist) atomically; returns the path.

        Files go to a hidden sibling first and the folder is renamed into place, so a crash
        leaves no half-written bundle under its final name.
        """
        import joblib

        directory = Path(directory)
        if directory.exists():
            msg = f"bundle folder {directory} already exists; bundles are immutable, choose a new name"
            raise FileExistsError(msg)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = directory.parent / f".{directory.name}.partial-{os.getpid()}"
        if staging.exists():
            shutil.rmtree(staging)
        (staging / DETECTORS_DIR).mkdir(parents=True)
        try:
            (staging / FEATURE_SPEC).write_text(self.feature_spec_json, encoding="utf-8")
            for group, detector in self.detectors.items():
                joblib.dump(detector, staging / DETECTORS_DIR / f"{group}.joblib", compress=3)
            if self.explainer_state is not None:
                joblib.dump(self.explainer_state, staging / EXPLAINER, compress=3)
            files = {
                p.relative_to(staging).as_posix(): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()
            }
            # Digest the manifest as a reader will parse it (numpy scalars, tuples already plain
            # JSON), so save and load canonicalise exactly the same object.
            content = json.loads(json.dumps(self.manifest(files), default=_json_default))
            content[MANIFEST_SHA256] = manifest_digest(content)
            text = json.dumps(content, indent=2, sort_keys=False)
            (staging / MANIFEST).write_text(text + "\n", encoding="utf-8")
            os.replace(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.path = directory
        logger.info("saved model bundle %s (%s, groups %s)", directory, self.model_key, sorted(self.detectors))
        return directory

    @classmethod
    def load(cls, directory: Path) -> ModelBundle:
        """Load and verify a bundle; :class:`ModelLoadError` on anything missing or inconsistent."""
        return load(directory)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    msg = f"cannot write {type(value).__name__} into a bundle manifest: {value!r}"
    raise TypeError(msg)


def new_bundle_name(model_key: str, when: datetime | None = None) -> str:
    """``<model_key>-<UTC yyyymmddThhmmssZ>``: sortable by time, readable in ``lo2 models list``."""
    stamp = (when or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{model_key}-{stamp}"


def unique_bundle_dir(model_dir: Path, model_key: str) -> Path:
    """A fresh bundle folder under ``model_dir`` (``-2``, ``-3``… when trained in the same second)."""
    base = Path(model_dir) / new_bundle_name(model_key)
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


# --- reading ----------------------------------------------------------------------------------


def read_manifest(directory: Path) -> dict[str, Any]:
    """The parsed manifest of a bundle, its own checksum verified (not yet the other files).

    Bundles saved before manifests carried ``manifest_sha256`` are still read (the layout is
    otherwise unchanged, so the schema version stays 1 and no reader for it is lost) with a
    warning that their manifest content cannot be verified; re-saving or re-training fixes that.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        msg = f"bundle {directory}: {MANIFEST} is missing (is this a model bundle folder?)"
        raise ModelLoadError(msg)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"bundle {directory}: {MANIFEST} is unreadable: {exc}"
        raise ModelLoadError(msg) from exc
    if not isinstance(data, dict):
        msg = f"bundle {directory}: {MANIFEST} must hold a JSON object, got {type(data).__name__}"
        raise ModelLoadError(msg)
    version = data.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        msg = (
            f"bundle {directory}: schema_version {version!r} is not supported by this code "
            f"(supported: {sorted(SUPPORTED_SCHEMA_VERSIONS)})"
        )
        raise ModelLoadError(msg)
    verify_manifest(directory, data)
    return data


def verify_manifest(directory: Path, manifest: Mapping[str, Any]) -> None:
    """The manifest's ``manifest_sha256`` matches its content; a legacy manifest without it warns."""
    recorded = manifest.get(MANIFEST_SHA256)
    if recorded is None:
        logger.warning(
            "bundle %s: %s has no %s (saved by an older lo2); its thresholds and metadata cannot be "
            "verified. Re-train or re-save the bundle to protect it",
            directory, MANIFEST, MANIFEST_SHA256,
        )
        return
    if not isinstance(recorded, str):
        msg = f"bundle {directory}: {MANIFEST} field {MANIFEST_SHA256} must be a hex string, got {type(recorded).__name__}"
        raise ModelLoadError(msg)
    actual = manifest_digest(manifest)
    if actual != recorded:
        msg = (
            f"bundle {directory}: {MANIFEST} was modified after saving (content SHA-256 {actual[:12]}…, "
            f"recorded {recorded[:12]}…); refusing to load it. Re-train, or restore the original bundle"
        )
        raise ModelLoadError(msg)


def verify_files(directory: Path, manifest: Mapping[str, Any]) -> None:
    """Every file listed in the manifest exists and has its SHA-256."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        msg = f"bundle {directory}: manifest lists no files; expected SHA-256 of every bundle file"
        raise ModelLoadError(msg)
    for rel, expected in files.items():
        path = Path(directory) / rel
        if not path.is_file():
            msg = f"bundle {directory}: file {rel} listed in the manifest is missing"
            raise ModelLoadError(msg)
        actual = sha256_file(path)
        if actual != expected:
            msg = f"bundle {directory}: checksum mismatch for {rel}: manifest {expected[:12]}…, file {actual[:12]}…"
            raise ModelLoadError(msg)


def load(directory: Path) -> ModelBundle:
    """Load a bundle after verifying schema, checksums and feature spec; never refits."""
    import joblib

    directory = Path(directory)
    if not directory.is_dir():
        msg = f"bundle folder {directory} does not exist"
        raise ModelLoadError(msg)
    manifest = read_manifest(directory)
    verify_files(directory, manifest)
    spec_info = manifest["feature_spec"]
    spec_text = (directory / spec_info["file"]).read_text(encoding="utf-8")
    if sha256_text(spec_text) != spec_info["fingerprint"]:
        msg = f"bundle {directory}: feature spec fingerprint does not match the manifest"
        raise ModelLoadError(msg)
    feature_spec = decode_feature_spec(spec_text, directory)
    vocabulary = spec_info.get("vocabulary_fingerprint") or ""
    current_vocabulary = vocabulary_fingerprint(feature_spec)
    if vocabulary and current_vocabulary != vocabulary:
        msg = (
            f"bundle {directory}: feature spec fingerprint {current_vocabulary!r} computed by this code "
            f"differs from {vocabulary!r} recorded at training; the featurization changed"
        )
        raise ModelLoadError(msg)
    detectors: dict[str, Detector] = {}
    for group in manifest["groups"]:
        rel = f"{DETECTORS_DIR}/{group}.joblib"
        if rel not in manifest["files"]:
            msg = f"bundle {directory}: group {group!r} has no detector file {rel} in the manifest"
            raise ModelLoadError(msg)
        try:
            detector = joblib.load(directory / rel)
        except (OSError, EOFError, ValueError, AttributeError, ImportError, ModuleNotFoundError) as exc:
            msg = f"bundle {directory}: cannot unpickle {rel}: {exc!r}"
            raise ModelLoadError(msg) from exc
        if not isinstance(detector, Detector):
            msg = f"bundle {directory}: {rel} holds {type(detector).__name__}, not a detector with fit/score"
            raise ModelLoadError(msg)
        detectors[group] = detector
    explainer_state = None
    if EXPLAINER in manifest["files"]:
        explainer_state = joblib.load(directory / EXPLAINER)
    return ModelBundle(
        model_key=manifest["model_key"],
        input_kind=manifest["input_kind"],
        detectors=detectors,
        thresholds={k: float(v) for k, v in manifest["thresholds"].items()},
        feature_spec=feature_spec,
        feature_names=list(spec_info.get("feature_names", [])),
        sequence_policy=dict(manifest["sequence_policy"]),
        threshold_quantile=float(manifest["threshold_quantile"]),
        metrics=dict(manifest.get("metrics", {})),
        reference=dict(manifest.get("reference", {})),
        training=dict(manifest.get("training", {})),
        explainer_state=explainer_state,
        created_at=str(manifest["created_at"]),
        code=dict(manifest["code_version"]),
        path=directory,
    )


# --- scoring ----------------------------------------------------------------------------------


def score(bundle: ModelBundle, X: Any, services: Sequence[str] | None = None) -> np.ndarray:
    """Anomaly scores (higher = more anomalous) of the rows of ``X`` in the bundle's input kind.

    ``services`` (one per row) is needed only for per-service bundles; it routes each row to its
    service's detector.
    """
    n_rows = int(X.shape[0])
    if not bundle.per_service:
        return np.asarray(bundle.detectors[ALL].score(X), dtype=np.float64).reshape(-1)
    if services is None or len(services) != n_rows:
        got = "None" if services is None else str(len(services))
        msg = f"per-service bundle needs one service per row: {n_rows} rows, {got} services"
        raise PayloadError("missing_service", msg)
    names = np.asarray(services, dtype=object)
    out = np.empty(n_rows, dtype=np.float64)
    for service in dict.fromkeys(names.tolist()):
        rows = np.flatnonzero(names == service)
        out[rows] = bundle.detectors[bundle._group(service)].score(X[rows])
    return out


def thresholds_for(bundle: ModelBundle, n_rows: int, services: Sequence[str] | None = None) -> np.ndarray:
    """The alert threshold of each row (the same for all rows of a pooled bundle)."""
    if not bundle.per_service:
        return np.full(n_rows, bundle.thresholds[ALL], dtype=np.float64)
    if services is None or len(services) != n_rows:
        msg = f"per-service bundle needs one service per row: {n_rows} rows"
        raise PayloadError("missing_service", msg)
    return np.array([bundle.threshold_for(s) for s in services], dtype=np.float64)


def is_anomaly(bundle: ModelBundle, scores: np.ndarray, services: Sequence[str] | None = None) -> np.ndarray:
    """Alert where score >= the calibrated threshold of the row's group."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    return s >= thresholds_for(bundle, s.size, services)


# --- the model folder: listing, resolving, promoting ------------------------------------------


#: The folder of ``lo2 retrain``'s decision records inside a model dir (not a bundle).
DECISIONS_DIR = "decisions"
#: Registry key of the length/duration leakage canary: a baseline to compare with, never the live
#: detector (``promote`` refuses it).
CANARY_KEY = "canary"


def list_bundles(model_dir: Path) -> list[tuple[Path, dict[str, Any] | None, str | None]]:
    """Every bundle folder under ``model_dir`` with its manifest (or the error reading it), oldest first."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    found: list[tuple[Path, dict[str, Any] | None, str | None]] = []
    for path in sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.is_symlink()):
        if path.name.startswith(".") or path.name == DECISIONS_DIR:
            continue
        try:
            found.append((path, read_manifest(path), None))
        except ModelLoadError as exc:
            found.append((path, None, str(exc)))
    found.sort(key=lambda item: (item[1] or {}).get("created_at", ""))
    return found


def current_target(model_dir: Path) -> Path | None:
    """The bundle folder ``current`` points at, or None when nothing is promoted."""
    pointer = Path(model_dir) / CURRENT
    if not pointer.is_symlink():
        return None
    return (pointer.parent / os.readlink(pointer)).resolve()


def resolve(model_dir: Path, name_or_current: str | Path = CURRENT) -> Path:
    """A bundle folder from ``current``, a bundle name under ``model_dir``, or a path."""
    model_dir = Path(model_dir)
    if str(name_or_current) == CURRENT:
        target = current_target(model_dir)
        if target is None:
            msg = f"no promoted model: {model_dir / CURRENT} does not exist (run `lo2 models promote` or train with --promote)"
            raise ModelLoadError(msg)
        return target
    candidate = Path(name_or_current)
    for path in (candidate, model_dir / candidate):
        if (path / MANIFEST).is_file():
            return path
    for path in (candidate, model_dir / candidate):
        # A folder that exists but holds no manifest is a different mistake than a typo'd name.
        if path.is_dir():
            msg = f"{path} is a folder but not a model bundle: it has no {MANIFEST}"
            raise ModelLoadError(msg)
    msg = f"model bundle {str(name_or_current)!r} not found as a path or under {model_dir}"
    raise ModelLoadError(msg)


def promote(bundle_dir: Path, model_dir: Path | None = None) -> Path | None:
    """Point ``current`` at ``bundle_dir`` atomically, after verifying it loads; returns the old target.

    The new symlink is created under a temporary name and renamed over ``current`` with
    ``os.replace`` (atomic on POSIX): readers see the old or the new bundle, never no bundle.
    """
    bundle_dir = Path(bundle_dir).resolve()
    bundle = load(bundle_dir)  # refuse to promote a bundle that would not load
    if bundle.model_key == CANARY_KEY:
        msg = (f"{bundle_dir.name} is the length/duration leakage canary: a baseline to compare models with, "
               "never the live detector; promote a detector bundle instead")
        raise ConfigError(msg)
    model_dir = Path(model_dir) if model_dir is not None else bundle_dir.parent
    model_dir.mkdir(parents=True, exist_ok=True)
    previous = current_target(model_dir)
    temp = model_dir / f".{CURRENT}.{os.getpid()}.tmp"
    if temp.is_symlink() or temp.exists():
        temp.unlink()
    os.symlink(os.path.relpath(bundle_dir, model_dir.resolve()), temp)
    os.replace(temp, model_dir / CURRENT)
    logger.info("promoted %s (previous: %s)", bundle_dir, previous)
    return previous


# --- the bundle's input columns: one selection for batch and live scoring --------------------


def _canary_names() -> tuple[str, ...]:
    from shared.features import CANARY_FEATURES

    return CANARY_FEATURES


def bundle_inputs(
    bundle: ModelBundle,
    X_dense: Any,
    X_tokens: Any = None,
    canary: Any = None,
    *,
    feature_names: Sequence[str] | None = None,
) -> Any:
    """The matrix a bundle's detectors score, its columns chosen by the names stored in the bundle.

    Why by name: the set of columns a model sees (``aggregates`` = level shares, rates, ...) is a
    choice of the training code, and that choice changes between versions; rebuilding it from the
    current code made an older bundle fail with "X has 14 features, expecting 15".  The bundle
    records the exact columns it was trained on (``bundle.feature_names``), so every scorer (``lo2
    train --load-model``, ``lo2 explain``, ``lo2 evaluate``, the live worker) selects those.

    ``X_dense``: the dense features (n × len(feature_names)) of ``shared.features`` (batch
    ``FeatureMatrix.X`` or ``vectorize_many``); ``feature_names`` names its columns (default: the
    bundle's feature spec).  ``X_tokens``: the hashed token shares (needed by ``tokens`` bundles).
    ``canary``: ``canary_features(meta)[0]`` (needed when the bundle lists ``canary:*`` columns).
    Token bundles take the whole hash space, plus any ``canary:*`` columns they list.
    """
    import scipy.sparse as sp

    base = bundle.input_kind.partition("+")[0]
    stored = list(bundle.feature_names)
    where = bundle.name or bundle.model_key
    n_rows = int(X_dense.shape[0]) if X_dense is not None else int(X_tokens.shape[0])
    canary_names = _canary_names()

    def canary_columns(names: Sequence[str]) -> np.ndarray:
        if canary is None:
            msg = f"bundle {where} needs the canary columns {list(names)}; pass canary=canary_features(meta)[0]"
            raise PayloadError("missing_features", msg)
        c = np.asarray(canary, dtype=np.float64).reshape(n_rows, len(canary_names))
        return c[:, [canary_names.index(name) for name in names]]

    if base == "tokens":
        if X_tokens is None:
            msg = f"bundle {where} scores hashed token shares (input kind {bundle.input_kind!r}); X_tokens is missing"
            raise PayloadError("missing_features", msg)
        hash_dims = int(getattr(bundle.feature_spec, "hash_dims", X_tokens.shape[1]))
        if int(X_tokens.shape[1]) != hash_dims:
            msg = f"bundle {where}: X_tokens has {X_tokens.shape[1]} columns, expected {hash_dims} hash dims"
            raise PayloadError("bad_features", msg)
        extra = [n for n in stored if n in canary_names]
        if not extra:
            return X_tokens
        return sp.hstack([X_tokens, sp.csr_matrix(canary_columns(extra))]).tocsr()

    if not stored:
        msg = (
            f"bundle {where} (input kind {bundle.input_kind!r}) records no feature names; "
            "cannot tell which columns it was trained on (retrain it)"
        )
        raise ModelLoadError(msg)
    names = list(feature_names if feature_names is not None else bundle.feature_spec.feature_names)
    position = {name: j for j, name in enumerate(names)}
    missing = [n for n in stored if n not in position and n not in canary_names]
    if missing:
        msg = (
            f"bundle {where}: columns {missing[:5]} (of {len(missing)} missing) are not produced by its feature "
            f"spec with this code; expected names among the {len(names)} dense features or {list(canary_names)}"
        )
        raise ModelLoadError(msg)
    dense = np.asarray(X_dense, dtype=np.float64) if X_dense is not None else np.zeros((n_rows, 0))
    if dense.ndim == 1:
        dense = dense.reshape(1, -1)
    if dense.shape[1] != len(names):
        msg = f"bundle {where}: X_dense has {dense.shape[1]} columns but {len(names)} feature names"
        raise PayloadError("bad_features", msg)
    in_dense = [position[n] for n in stored if n in position]
    if len(in_dense) == len(stored):
        return dense[:, in_dense]
    pieces = [dense[:, [position[n]]] if n in position else canary_columns([n]) for n in stored]
    return np.hstack(pieces)


def accumulator_inputs(bundle: ModelBundle, accs: Sequence[Any]) -> Any:
    """The bundle's input matrix of closed sequences (``shared.sequences.SequenceAccumulator``).

    The live path of :func:`bundle_inputs`: ``vectorize_many`` / ``vectorize_tokens_many`` with the
    bundle's own feature spec (rows bit-identical to the batch featurization of the same events),
    then the bundle's stored columns.  Only the representations the bundle needs are computed.
    """
    from shared.features import (
        accumulators_meta,
        canary_features,
        vectorize_many,
        vectorize_tokens_many,
    )

    spec = bundle.feature_spec
    base = bundle.input_kind.partition("+")[0]
    needs_canary = any(n in _canary_names() for n in bundle.feature_names)
    canary = canary_features(accumulators_meta(accs))[0] if needs_canary else None
    if base == "tokens":
        return bundle_inputs(bundle, None, vectorize_tokens_many(accs, spec), canary)
    return bundle_inputs(bundle, vectorize_many(accs, spec), None, canary)


@dataclass(frozen=True)
class ScoredSequences:
    """Scores of a batch of sequences: the input rows (for explanations), scores and alert flags."""

    X: Any
    services: list[str]
    scores: np.ndarray
    thresholds: np.ndarray
    alerts: np.ndarray


def score_accumulators(bundle: ModelBundle, accs: Sequence[Any]) -> ScoredSequences:
    """Score closed sequences with a bundle: what the live worker calls per micro-batch.

    Equal to the batch score of the same sequences (``tests/unit/test_bundle_live_parity.py``).
    Explain an alerting row ``i`` with ``shared.explain.explain_sequence(bundle, result.X[i],
    accs[i].evidence, service=result.services[i])``.
    """
    services = [str(a.service) for a in accs]
    X = accumulator_inputs(bundle, accs)
    routed = services if bundle.per_service else None
    scores = score(bundle, X, routed)
    thresholds = thresholds_for(bundle, len(services), routed)
    return ScoredSequences(X, services, scores, thresholds, scores >= thresholds)
