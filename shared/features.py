"""Featurization of sequences: one definition, two paths (batch table / incremental accumulator).

A :class:`FeatureSpec` (frozen template vocabulary + sequence policy + feature layout + hashing
size) is fitted once on training events and stored in the model bundle.  Then:

* **batch** – :func:`featurize_events` turns an events table (the ``events.parquet`` contract) into a
  :class:`FeatureMatrix`, vectorised with Polars: mask the unique messages, map the unique masked
  messages to template ids, ``group_by`` counts, a few sparse products;
* **incremental** – :class:`EventEncoder` feeds a :class:`shared.sequences.SequenceBuilder`, and
  :func:`vectorize` / :func:`vectorize_tokens` turn a closed sequence's accumulator into the same
  vectors, bit for bit (both paths build the same integer "raw count" row and run the same numpy
  arithmetic on it; ``tests/unit/test_features.py`` proves parity).

Every dense feature is a share or a rate, so it does not grow with sequence length (v1 ``correct``
files are 6× longer than error files: reference ``loglead-lo2-demo.md`` §9.2).  No timestamp,
thread, correlation id, run or test-case name reaches a feature.  Because the IsolationForest only
sees ``correct`` training data, there are aggregate features that vary inside normal data and jump
for anomalies (ERROR/WARN shares, error-code rate, rare+unseen template share, stack-trace share,
failure-word share, distinct templates per 100 events), next to per-template shares (top-N by
training frequency) for the supervised models.  The length/duration-only leakage canary is
:func:`canary_features`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from shared.catalog import STATUS_CODES
from shared.errors import ConfigError, DataLayoutError, ModelLoadError
from shared.masking import ERROR_CODE_REGEX, error_codes, mask_expr, mask_message
from shared.parsing import LEVELS
from shared.sequences import (
    ERR_OTHER,
    EncodedEvent,
    Event,
    SequenceAccumulator,
    SequencePolicy,
    window_seq_id,
)
from shared.templates import (
    FIRST_TEMPLATE_ID,
    RARE_ID,
    UNSEEN_ID,
    DrainParams,
    TemplateVocabulary,
    canonical_json,
    learn_vocabulary,
)

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

#: light-4j 2.0.28 status codes (reference ``lo2-data.md`` §3.4): always get a column, so supervised
#: models can use codes that the training split happens not to contain.
KNOWN_ERROR_CODES: tuple[str, ...] = (
    "ERR10000", "ERR10002", "ERR10010", "ERR10014", "ERR10042", "ERR10043",
    "ERR11000", "ERR11001", "ERR11002", "ERR11003", "ERR11004", "ERR11013", "ERR11014", "ERR11017",
    "ERR11601", "ERR11620",
    "ERR12000", "ERR12001", "ERR12002", "ERR12003", "ERR12004", "ERR12005", "ERR12007", "ERR12008",
    "ERR12009", "ERR12011", "ERR12012", "ERR12013", "ERR12014", "ERR12015", "ERR12016", "ERR12017",
    "ERR12018", "ERR12019", "ERR12020", "ERR12021", "ERR12025", "ERR12026", "ERR12027", "ERR12028",
    "ERR12029", "ERR12030", "ERR12033", "ERR12034", "ERR12035", "ERR12036", "ERR12037", "ERR12038",
    "ERR12039", "ERR12040", "ERR12041", "ERR12042", "ERR12043",
)

#: Words that say something went wrong (matched on the masked message, case-insensitive).
FAILURE_WORDS_REGEX = r"(?i)exception|error|fail|invalid|denied|refused|not found|unable|timeout|timed out|mismatch"
_FAILURE_RE = re.compile(FAILURE_WORDS_REGEX)

#: Logger families for the ERROR share per family.  Why: in normal LO2 traffic the ERROR lines come
#: from the cache/persistence layer (``ClientMapStore delete - Exception:`` with a MySQL stack) and
#: a few token-handler races, while a rejected request is logged by a request *handler*
#: (``LightHttpHandler setExchangeStatus``, ``Oauth2TokenPostHandler ApiException``).  One
#: ``level:ERROR`` share mixes both; an operator reads them apart by logger.
HANDLER_LOGGER_REGEX = r"(?i)handler"
CACHE_LOGGER_REGEX = r"(?i)cache|store|hazelcast"
_HANDLER_RE = re.compile(HANDLER_LOGGER_REGEX)
_CACHE_RE = re.compile(CACHE_LOGGER_REGEX)
#: An HTTP status stated in a masked message (``statusCode=HTTP404``, ``error code HTTP500``).
_HTTP_STATUS_RE = re.compile(r"HTTP([45])[0-9][0-9]")
_CODE_RE = re.compile(ERROR_CODE_REGEX)
#: HTTP status class (4 or 5) of the light-4j codes whose status.yml entry we know.
CODE_STATUS_CLASS: dict[str, int] = {c: s.http_status // 100 for c, s in STATUS_CODES.items()}


def code_surprise_milli(code_counts: dict[str, int], code: str | None) -> int:
    """How surprising one event with ``code`` is, in milli-nats: ``round(1000 * ln(total / count))``
    over the training events' code counts; a code never seen in training (or ``None`` = a code
    outside the spec) gets ``ln(total) + 1``.  Why: normal LO2 traffic has a few background codes
    (ERR12029 refresh races, ERR12008, ERR12014) at a low rate; an IsolationForest trained on
    ``correct`` cannot split on per-code columns that are always 0 there, but it can on this
    weighted rate, which varies in normal data and jumps when an uncommon code appears.  Integer
    weights keep batch and incremental sums bit-identical."""
    total = sum(code_counts.values())
    if total == 0:
        return 1000
    count = code_counts.get(code, 0) if code is not None else 0
    nats = math.log(total / count) if count > 0 else math.log(total) + 1.0
    return round(1000 * nats)


def logger_family(logger: str) -> str:
    """``handler`` (request handlers), ``cache`` (cache / MapStore / Hazelcast) or ``other``."""
    if _HANDLER_RE.search(logger):
        return "handler"
    if _CACHE_RE.search(logger):
        return "cache"
    return "other"


def template_status_class(masked_text: str) -> int:
    """4 / 5 when a template's text states an HTTP 4xx / 5xx status and carries no light-4j code
    (an event with a code is counted through the code's status instead, so never twice); else 0."""
    if _CODE_RE.search(masked_text):
        return 0
    m = _HTTP_STATUS_RE.search(masked_text)
    return int(m.group(1)) if m else 0

#: Columns ``featurize_events`` needs (``seq_id`` only for the file policy).
REQUIRED_COLUMNS = (
    "run", "run_epoch", "test_case", "service", "timestamp", "level", "logger", "method", "message",
)
#: Optional columns and the value used when a table lacks them (unlabelled data has no labels).
OPTIONAL_COLUMNS: dict[str, pl.Expr] = {
    "stack": pl.lit(None, dtype=pl.String),
    "n_stack_lines": pl.lit(0, dtype=pl.Int64),
    "anomaly": pl.lit(None, dtype=pl.Boolean),
    "anomaly_service": pl.lit(None, dtype=pl.Boolean),
}
META_COLUMNS = (
    "seq_id", "run", "run_epoch", "test_case", "service", "window_start_ms",
    "n_events", "duration_s", "n_stack_lines", "anomaly", "anomaly_service",
)
#: The raw sequence columns the leakage canary sees: length and duration ONLY.  ``n_stack_lines``
#: was a third column once; it counts stack-trace lines, i.e. exceptions, which is the error
#: signal itself, so a canary with it is no longer a length/duration baseline.
CANARY_COLUMNS = ("n_events", "duration_s")
CANARY_FEATURES = tuple(f"canary:{c}" for c in CANARY_COLUMNS)


def hash_token(token: str, dims: int) -> int:
    """Stable hashing-trick index (crc32; Python's ``hash`` is salted per process)."""
    return zlib.crc32(token.encode()) % dims


def event_tokens(level: str, logger: str, method: str, masked: str) -> list[str]:
    """Words of one event for the hashing representation: level, logger, method, masked words."""
    return [level, logger, method, *masked.split()]


def is_failure_text(masked: str) -> bool:
    return _FAILURE_RE.search(masked) is not None


# --------------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureSpec:
    """Everything needed to turn events into feature vectors the way the model was trained."""

    vocabulary: TemplateVocabulary
    policy: SequencePolicy
    top_template_ids: tuple[int, ...]
    error_codes: tuple[str, ...]
    hash_dims: int
    token_names: dict[int, str] = field(default_factory=dict)
    #: events carrying each error code in the training events (for ``rate:error_code_surprise``)
    code_counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hash_dims < 1:
            raise ConfigError(f"hash_dims must be >= 1, got {self.hash_dims}")
        bad = [t for t in self.top_template_ids if not FIRST_TEMPLATE_ID <= t < self.vocabulary.n_ids]
        if bad:
            raise ConfigError(f"top_template_ids {bad} are not real templates of the vocabulary")
        if len(set(self.error_codes)) != len(self.error_codes):
            raise ConfigError("error_codes of a feature spec must be distinct")
        bad_counts = {c: n for c, n in self.code_counts.items() if n < 0}
        if bad_counts:
            raise ConfigError(f"code_counts must be >= 0, got {bad_counts}")
        # Raw layout (see _raw_layout) computed once.
        object.__setattr__(self, "_layout", _RawLayout.build(self))

    @property
    def layout(self) -> _RawLayout:
        return self._layout  # type: ignore[attr-defined,no-any-return]

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.layout.feature_names

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def feature_groups(self) -> dict[str, list[int]]:
        """Column indices of ``X`` by name prefix: ``tpl``, ``share``, ``level``, ``err``, ``rate``.

        For models that should see only part of the vector, e.g. an IsolationForest on the
        aggregates (``share`` + ``level`` + ``rate``): per-template shares follow the traffic mix
        of a run, which adds noise for a detector trained on ``correct`` only (docs/features.md).
        """
        groups: dict[str, list[int]] = {}
        for j, name in enumerate(self.feature_names):
            groups.setdefault(name.split(":", 1)[0], []).append(j)
        return groups

    def token_feature_names(self) -> list[str]:
        """Names of the ``X_tokens`` columns: ``tok:<a training token hashed there>`` or ``tok:#i``."""
        return [f"tok:{self.token_names[i]}" if i in self.token_names else f"tok:#{i}" for i in range(self.hash_dims)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "vocabulary": self.vocabulary.to_dict(),
            "policy": self.policy.to_dict(),
            "top_template_ids": list(self.top_template_ids),
            "error_codes": list(self.error_codes),
            "hash_dims": self.hash_dims,
            "token_names": {str(k): v for k, v in sorted(self.token_names.items())},
            "code_counts": dict(sorted(self.code_counts.items())),
            "feature_names": list(self.feature_names),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        try:
            if data["schema_version"] != SCHEMA_VERSION:
                raise ModelLoadError(
                    f"feature spec schema_version {data['schema_version']!r} is not supported (expected {SCHEMA_VERSION})"
                )
            spec = cls(
                vocabulary=TemplateVocabulary.from_dict(data["vocabulary"]),
                policy=SequencePolicy.from_dict(data["policy"]),
                top_template_ids=tuple(int(t) for t in data["top_template_ids"]),
                error_codes=tuple(str(c) for c in data["error_codes"]),
                hash_dims=int(data["hash_dims"]),
                token_names={int(k): str(v) for k, v in data["token_names"].items()},
                code_counts={str(k): int(v) for k, v in data.get("code_counts", {}).items()},
            )
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ModelLoadError(f"feature spec JSON is malformed: {exc!r}") from exc
        if list(spec.feature_names) != list(data["feature_names"]):
            raise ModelLoadError(
                "feature spec JSON lists feature names that this code would not produce "
                f"({len(data['feature_names'])} stored vs {spec.n_features} computed): written by another version?"
            )
        return spec

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        return cls.from_dict(json.loads(text))

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON (goes into the model bundle manifest)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def encoder(self) -> EventEncoder:
        return EventEncoder(self)


@dataclass(frozen=True)
class _RawLayout:
    """Column positions of the integer "raw count" row both paths build before the arithmetic."""

    n_top: int
    top_pos: dict[int, int]  # template id -> raw column
    code_pos: dict[str, int]
    feature_names: tuple[str, ...]
    # fixed raw columns (offsets)
    other: int
    rare: int
    unseen: int
    level0: int
    code0: int
    code_other: int
    code_events: int
    stack_events: int
    stack_lines: int
    failure: int
    distinct: int
    n_events: int
    duration_ms: int
    err_handler: int
    err_cache: int
    status4: int
    status5: int
    surprise: int
    width: int
    #: per template id (index = id): ERROR events of that template count as handler (1) / cache (2)
    tpl_err_family: tuple[int, ...]
    #: per template id: HTTP status class stated by the template text without a code (0, 4, 5)
    tpl_status: tuple[int, ...]
    #: raw column of the status class per error-code raw column (codes of known status only)
    code_status_col: dict[int, int]
    #: surprise weight (milli-nats, an integer so both paths sum exactly) per error-code raw column
    code_weight: dict[int, int]

    @staticmethod
    def build(spec: FeatureSpec) -> _RawLayout:
        n_top = len(spec.top_template_ids)
        other = n_top
        rare, unseen = other + 1, other + 2
        level0 = unseen + 1
        code0 = level0 + len(LEVELS)
        code_other = code0 + len(spec.error_codes)
        code_events = code_other + 1
        stack_events, stack_lines = code_events + 1, code_events + 2
        failure, distinct = code_events + 3, code_events + 4
        n_events, duration_ms = code_events + 5, code_events + 6
        err_handler, err_cache, status4, status5 = duration_ms + 1, duration_ms + 2, duration_ms + 3, duration_ms + 4
        surprise = status5 + 1
        vocab = spec.vocabulary
        fam = [0] * vocab.n_ids
        status = [0] * vocab.n_ids
        for t in vocab.templates:
            if t.level == "ERROR":
                fam[t.id] = {"handler": 1, "cache": 2}.get(logger_family(t.logger), 0)
            status[t.id] = template_status_class(t.text)
        code_pos = {c: code0 + i for i, c in enumerate(spec.error_codes)}
        code_status_col = {
            code_pos[c]: (status4 if CODE_STATUS_CLASS[c] == 4 else status5)
            for c in spec.error_codes
            if CODE_STATUS_CLASS.get(c) in (4, 5)
        }
        code_weight = {col: code_surprise_milli(spec.code_counts, c) for c, col in code_pos.items()}
        code_weight[code_other] = code_surprise_milli(spec.code_counts, None)
        names: list[str] = []
        seen: set[str] = set()
        for tid in spec.top_template_ids:
            name = "tpl:" + spec.vocabulary.describe(tid)
            if name in seen:
                name = f"{name} #{tid}"
            seen.add(name)
            names.append(name)
        names += ["tpl:(other templates)", "share:rare_template", "share:unseen_template", "share:rare_or_unseen_template"]
        names += [f"level:{lv}" for lv in LEVELS]
        names += [f"err:{c}" for c in spec.error_codes] + ["err:other"]
        names += [
            "rate:error_code_events",
            "share:stack_events",
            "rate:stack_lines_per_event",
            "share:failure_words",
            "rate:distinct_templates_per_100",
            "rate:events_per_s",
            "share:error_events_handler",
            "share:error_events_cache",
            "share:error_events_other",
            "share:http_4xx_events",
            "share:http_5xx_events",
            "rate:error_code_surprise",
        ]
        return _RawLayout(
            n_top=n_top,
            top_pos={tid: i for i, tid in enumerate(spec.top_template_ids)},
            code_pos=code_pos,
            feature_names=tuple(names),
            other=other, rare=rare, unseen=unseen, level0=level0, code0=code0, code_other=code_other,
            code_events=code_events, stack_events=stack_events, stack_lines=stack_lines, failure=failure,
            distinct=distinct, n_events=n_events, duration_ms=duration_ms,
            err_handler=err_handler, err_cache=err_cache, status4=status4, status5=status5, surprise=surprise,
            width=surprise + 1, tpl_err_family=tuple(fam), tpl_status=tuple(status), code_status_col=code_status_col,
            code_weight=code_weight,
        )

    def template_column(self, tid: int) -> int:
        if tid == UNSEEN_ID:
            return self.unseen
        if tid == RARE_ID:
            return self.rare
        return self.top_pos.get(tid, self.other)

    def code_column(self, code: str) -> int:
        return self.code_pos.get(code, self.code_other)


def _features_from_raw(raw: np.ndarray, lay: _RawLayout) -> np.ndarray:
    """The one arithmetic from raw counts (n × width, float64) to features (n × n_features)."""
    n = raw[:, lay.n_events : lay.n_events + 1]
    n_safe = np.maximum(n, 1.0)
    shares = raw[:, : lay.unseen + 1] / n_safe  # top templates, other, rare, unseen
    rare_or_unseen = (raw[:, lay.rare : lay.rare + 1] + raw[:, lay.unseen : lay.unseen + 1]) / n_safe
    levels = raw[:, lay.level0 : lay.code0] / n_safe
    codes = raw[:, lay.code0 : lay.code_other + 1] / n_safe
    tail = raw[:, [lay.code_events, lay.stack_events, lay.stack_lines, lay.failure]] / n_safe
    distinct = 100.0 * raw[:, lay.distinct : lay.distinct + 1] / n_safe
    seconds = np.maximum(raw[:, lay.duration_ms : lay.duration_ms + 1] / 1000.0, 1.0)
    rate = n / seconds
    n_error = raw[:, lay.level0 + LEVELS.index("ERROR") : lay.level0 + LEVELS.index("ERROR") + 1]
    handler = raw[:, lay.err_handler : lay.err_handler + 1]
    cache = raw[:, lay.err_cache : lay.err_cache + 1]
    # ERROR events of other loggers or of rare/unseen templates (logger unknown): the remainder
    families = np.hstack([handler, cache, n_error - handler - cache]) / n_safe
    status = raw[:, [lay.status4, lay.status5]] / n_safe
    surprise = raw[:, lay.surprise : lay.surprise + 1] / 1000.0 / n_safe
    return np.hstack([shares, rare_or_unseen, levels, codes, tail, distinct, rate, families, status, surprise])


# --------------------------------------------------------------------------------------------------
# Incremental path
# --------------------------------------------------------------------------------------------------
class EventEncoder:
    """``Event -> EncodedEvent`` for the sequence builder (cached per unique masked message)."""

    def __init__(self, spec: FeatureSpec, cache_size: int = 100_000) -> None:
        self.spec = spec
        self._cache: dict[tuple[str, str, str, str], tuple[int, tuple[int, ...], bool]] = {}
        self._plain: dict[tuple[str, str, str, str], EncodedEvent] = {}
        self._cache_size = cache_size

    def encode_key(self, level: str, logger: str, method: str, masked: str) -> tuple[int, tuple[int, ...], bool]:
        """(template id, hashed token ids, failure words?) of one masked message."""
        key = (level, logger, method, masked)
        hit = self._cache.get(key)
        if hit is None:
            dims = self.spec.hash_dims
            hit = (
                self.spec.vocabulary.lookup(level, logger, method, masked),
                tuple(hash_token(t, dims) for t in event_tokens(level, logger, method, masked)),
                is_failure_text(masked),
            )
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def __call__(self, event: Event) -> EncodedEvent:
        masked = mask_message(event.message)
        text = event.message if event.stack is None else event.message + "\n" + event.stack
        if "ERR" not in text:
            # No error codes: the result depends on the cache key only, so the (immutable)
            # EncodedEvent itself is cached and shared: no object per event.
            key = (event.level, event.logger, event.method, masked)
            enc = self._plain.get(key)
            if enc is None:
                tid, tokens, failure = self.encode_key(*key)
                if len(self._plain) >= self._cache_size:
                    self._plain.clear()
                enc = self._plain[key] = EncodedEvent(tid, (), tokens, failure, tid == UNSEEN_ID)
            return enc
        tid, tokens, failure = self.encode_key(event.level, event.logger, event.method, masked)
        return EncodedEvent(
            template_id=tid,
            error_codes=error_codes(text),
            token_ids=tokens,
            failure_text=failure,
            unseen=tid == UNSEEN_ID,
        )


def raw_counts(acc: SequenceAccumulator, spec: FeatureSpec) -> np.ndarray:
    """The raw count row (1 × width) of one accumulated sequence."""
    raw = np.zeros((1, spec.layout.width), dtype=np.float64)
    _fill_raw(raw[0], acc, spec.layout)
    return raw


def _fill_raw(row: np.ndarray, acc: SequenceAccumulator, lay: _RawLayout) -> None:
    fam, status, n_ids = lay.tpl_err_family, lay.tpl_status, len(lay.tpl_status)
    for tid, c in acc.template_counts.items():
        row[lay.template_column(tid)] += c
        if 0 <= tid < n_ids:
            if fam[tid]:
                row[lay.err_handler if fam[tid] == 1 else lay.err_cache] += c
            if status[tid]:
                row[lay.status4 if status[tid] == 4 else lay.status5] += c
    for i, lv in enumerate(LEVELS):
        row[lay.level0 + i] = acc.level_counts.get(lv, 0)
    for code, c in acc.error_code_counts.items():
        col = lay.code_other if code == ERR_OTHER else lay.code_column(code)
        row[col] += c
        row[lay.surprise] += c * lay.code_weight[col]
        if col in lay.code_status_col:
            row[lay.code_status_col[col]] += c
    row[lay.code_events] = acc.n_error_code_events
    row[lay.stack_events] = acc.n_stack_events
    row[lay.stack_lines] = acc.n_stack_lines
    row[lay.failure] = acc.n_failure_events
    row[lay.distinct] = len(acc.template_counts)
    row[lay.n_events] = acc.n_events
    row[lay.duration_ms] = acc.duration_ms


def vectorize(acc: SequenceAccumulator, spec: FeatureSpec) -> np.ndarray:
    """Dense feature vector (1-D, float64) of one sequence: identical to its row in the batch path."""
    row: np.ndarray = _features_from_raw(raw_counts(acc, spec), spec.layout)[0]
    return row


def vectorize_many(accs: Sequence[SequenceAccumulator], spec: FeatureSpec) -> np.ndarray:
    """Dense features of many sequences at once (n × n_features): row i == ``vectorize(accs[i])``.

    For the worker's micro-batches: one numpy pass instead of one per sequence (the arithmetic is
    elementwise, so the rows are bit-identical to single-sequence and batch results).
    """
    lay = spec.layout
    raw = np.zeros((len(accs), lay.width), dtype=np.float64)
    for i, acc in enumerate(accs):
        _fill_raw(raw[i], acc, lay)
    return _features_from_raw(raw, lay)


def vectorize_tokens_many(accs: Sequence[SequenceAccumulator], spec: FeatureSpec) -> sp.csr_matrix:
    """Hashing representation of many sequences (n × hash_dims CSR), row i == ``vectorize_tokens(accs[i])``."""
    if not accs:
        return sp.csr_matrix((0, spec.hash_dims), dtype=np.float64)
    return sp.vstack([vectorize_tokens(a, spec) for a in accs], format="csr")


def accumulators_meta(accs: Sequence[SequenceAccumulator]) -> pl.DataFrame:
    """The ``FeatureMatrix.meta``-like columns the incremental path knows (labels unknown live).

    seq_id, run, test_case, service, window_start_ms, n_events, duration_s, n_stack_lines: enough for
    :func:`canary_features` and for records; ``anomaly`` columns are not known to a live worker.
    """
    return pl.DataFrame(
        {
            "seq_id": [a.seq_id for a in accs],
            "run": [a.run for a in accs],
            "test_case": [a.test_case for a in accs],
            "service": [a.service for a in accs],
            "window_start_ms": [a.window_start_ms for a in accs],
            "n_events": [a.n_events for a in accs],
            "duration_s": [a.duration_s for a in accs],
            "n_stack_lines": [a.n_stack_lines for a in accs],
        },
        schema={
            "seq_id": pl.String, "run": pl.String, "test_case": pl.String, "service": pl.String,
            "window_start_ms": pl.Int64, "n_events": pl.Int64, "duration_s": pl.Float64, "n_stack_lines": pl.Int64,
        },
    )


def vectorize_tokens(acc: SequenceAccumulator, spec: FeatureSpec) -> sp.csr_matrix:
    """Hashing representation (1 × hash_dims CSR, token shares) of one sequence."""
    if not acc.token_counts:
        return sp.csr_matrix((1, spec.hash_dims), dtype=np.float64)
    idx = np.array(sorted(acc.token_counts), dtype=np.int64)
    counts = np.array([acc.token_counts[i] for i in idx], dtype=np.float64)
    total = counts.sum()
    return sp.csr_matrix((counts / total, idx, np.array([0, len(idx)])), shape=(1, spec.hash_dims))


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------
def _as_lazy(events: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    return events.lazy() if isinstance(events, pl.DataFrame) else events


def _check_columns(lf: pl.LazyFrame, needed: Sequence[str], what: str) -> None:
    have = set(lf.collect_schema().names())
    missing = [c for c in needed if c not in have]
    if missing:
        raise DataLayoutError(
            f"{what}: events table lacks columns {missing} (has {sorted(have)}); expected the events.parquet contract"
        )


def _masked_messages(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Add ``masked``: mask each *unique* message once, join back (messages repeat heavily)."""
    uniq = lf.select(pl.col("message").unique()).with_columns(masked=mask_expr(pl.col("message")))
    return lf.join(uniq, on="message", how="left", nulls_equal=True)


def _code_text() -> pl.Expr:
    return pl.concat_str([pl.col("message"), pl.lit("\n"), pl.col("stack").cast(pl.String).fill_null("")])


def feature_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of :func:`fit_feature_spec` from the settings (``LO2_FEATURE_*`` etc.)."""
    return {
        "min_support": settings.feature_min_support,
        "top_templates": settings.feature_top_templates,
        "hash_dims": settings.feature_hash_dims,
        "policy": SequencePolicy.from_settings(settings),
        "drain": DrainParams(sim_th=settings.drain_sim_th, depth=settings.drain_depth),
    }


def fit_feature_spec(
    train_events: pl.DataFrame | pl.LazyFrame,
    *,
    min_support: int = 5,
    top_templates: int = 200,
    hash_dims: int = 4096,
    policy: SequencePolicy | None = None,
    drain: DrainParams | None = None,
) -> FeatureSpec:
    """Learn the template vocabulary and the feature layout from training events.

    ``min_support``: templates with fewer training events go to the "rare" bucket.
    ``top_templates``: how many templates (most frequent first) get their own share column.
    """
    if top_templates < 0:
        raise ConfigError(f"top_templates must be >= 0, got {top_templates}")
    lf = _as_lazy(train_events)
    _check_columns(lf, ("level", "logger", "method", "message"), "fit_feature_spec")
    has_stack = "stack" in lf.collect_schema().names()
    base = lf.select(
        pl.col("level", "logger", "method", "message").fill_null(""),
        pl.col("stack") if has_stack else pl.lit(None, dtype=pl.String).alias("stack"),
    )
    counts = (
        _masked_messages(base)
        .group_by("level", "logger", "method", "masked")
        .len()
        .sort("level", "logger", "method", "masked")
        .collect()
    )
    if counts.height == 0:
        raise ConfigError("fit_feature_spec: the training events table is empty")
    vocab = learn_vocabulary(counts.iter_rows(), min_support=min_support, drain=drain)
    code_count_rows = (
        base.select(_code_text().str.extract_all(ERROR_CODE_REGEX).list.unique().alias("c"))
        .explode("c")
        .drop_nulls()
        .group_by("c")
        .len()
        .collect()
    )
    code_counts = {str(c): int(n) for c, n in code_count_rows.iter_rows()}
    seen_codes = list(code_counts)
    codes = tuple(sorted(set(KNOWN_ERROR_CODES) | set(seen_codes)))
    top = tuple(t.id for t in vocab.templates[:top_templates])
    token_names: dict[int, str] = {}
    for level, logger_, method, masked, _n in counts.iter_rows():
        for tok in event_tokens(level, logger_, method, masked):
            i = hash_token(tok, hash_dims)
            if i not in token_names or tok < token_names[i]:
                token_names[i] = tok
    spec = FeatureSpec(
        vocabulary=vocab,
        policy=policy or SequencePolicy(),
        top_template_ids=top,
        error_codes=codes,
        hash_dims=hash_dims,
        token_names=token_names,
        code_counts=code_counts,
    )
    log.info(
        "feature spec: %d templates (%d as columns), %d error codes, %d dense features, %d hash dims",
        vocab.size, len(top), len(codes), spec.n_features, hash_dims,
    )
    return spec


# --------------------------------------------------------------------------------------------------
# Batch path
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureMatrix:
    """Features of many sequences (rows aligned across ``meta``, ``X`` and ``X_tokens``)."""

    meta: pl.DataFrame
    X: np.ndarray
    feature_names: tuple[str, ...]
    X_tokens: sp.csr_matrix
    token_feature_names: tuple[str, ...]
    spec_fingerprint: str

    @property
    def n_sequences(self) -> int:
        return self.meta.height


def _assign_sequences(lf: pl.LazyFrame, policy: SequencePolicy, has_seq_id: bool) -> pl.LazyFrame:
    ts_ms = pl.col("timestamp").dt.epoch("ms")
    lf = lf.with_columns(ts_ms=ts_ms)
    if policy.kind == "file":
        if has_seq_id:
            return lf.with_columns(window_start_ms=pl.lit(None, dtype=pl.Int64))
        from shared.parsing import file_seq_id

        keys = lf.select("run", "test_case", "service").unique().collect()
        keys = keys.with_columns(
            seq_id=pl.Series([file_seq_id(*r) for r in keys.iter_rows()], dtype=pl.String)
        )
        return lf.join(keys.lazy(), on=["run", "test_case", "service"], how="left").with_columns(
            window_start_ms=pl.lit(None, dtype=pl.Int64)
        )
    w = policy.window_ms
    lf = lf.with_columns(window_start_ms=pl.col("ts_ms") - pl.col("ts_ms") % w)
    if has_seq_id:
        lf = lf.drop("seq_id")
    keys = lf.select("run", "service", "window_start_ms").unique().collect()
    keys = keys.with_columns(
        seq_id=pl.Series([window_seq_id(*r) for r in keys.iter_rows()], dtype=pl.String)
    )
    return lf.join(keys.lazy(), on=["run", "service", "window_start_ms"], how="left")


def featurize_events(events: pl.DataFrame | pl.LazyFrame, spec: FeatureSpec) -> FeatureMatrix:
    """Batch featurization (vectorised): one row per sequence of ``spec.policy``."""
    lf = _as_lazy(events)
    _check_columns(lf, REQUIRED_COLUMNS, "featurize_events")
    names = set(lf.collect_schema().names())
    missing = {c: e.alias(c) for c, e in OPTIONAL_COLUMNS.items() if c not in names}
    if missing:
        lf = lf.with_columns(**missing)
    # text columns: a null would break the joins on unique messages; the contract has none
    lf = lf.with_columns(pl.col("level", "logger", "method", "message").fill_null(""))
    lf = _assign_sequences(lf, spec.policy, "seq_id" in names)
    lay = spec.layout
    df = (
        _masked_messages(lf)
        .select(
            "seq_id", "run", "run_epoch", "test_case", "service", "window_start_ms", "ts_ms",
            "level", "logger", "method", "masked",
            pl.col("n_stack_lines").fill_null(0).cast(pl.Int64),
            pl.col("anomaly").cast(pl.Boolean), pl.col("anomaly_service").cast(pl.Boolean),
            pl.when(_code_text().str.contains("ERR", literal=True))
            .then(_code_text().str.extract_all(ERROR_CODE_REGEX).list.unique())
            .otherwise(pl.lit([], dtype=pl.List(pl.String)))
            .alias("codes"),
        )
        .collect()
    )
    if df.height == 0:
        raise DataLayoutError("featurize_events: the events table is empty")

    # --- sequences: one row each, in a stable order --------------------------------------------
    seqs = (
        df.group_by("seq_id")
        .agg(
            pl.col("run").first(),
            pl.col("run_epoch").first(),
            pl.col("test_case").unique().sort().str.join("+"),
            pl.col("service").first(),
            pl.col("window_start_ms").first(),
            pl.len().alias("n_events"),
            (pl.col("ts_ms").max() - pl.col("ts_ms").min()).alias("duration_ms"),
            pl.col("n_stack_lines").sum(),
            (pl.col("n_stack_lines") > 0).sum().alias("n_stack_events"),
            (pl.col("codes").list.len() > 0).sum().alias("n_code_events"),
            pl.col("anomaly").any(ignore_nulls=False),
            pl.col("anomaly_service").any(ignore_nulls=False),
            pl.col("ts_ms").min().alias("start_ms"),
        )
        .sort("run_epoch", "run", "test_case", "service", "start_ms", "seq_id")
        .with_row_index("seq_idx")
    )
    n_seq = seqs.height
    df = df.join(seqs.select("seq_id", "seq_idx"), on="seq_id", how="left")

    # --- unique masked messages -> template id, tokens, failure words --------------------------
    keys = df.select("level", "logger", "method", "masked").unique(maintain_order=True).with_row_index("key_idx")
    enc = EventEncoder(spec)
    encoded = [enc.encode_key(*k) for k in keys.select("level", "logger", "method", "masked").iter_rows()]
    n_keys = keys.height
    key_tid = np.array([e[0] for e in encoded], dtype=np.int64)
    key_failure = np.array([e[2] for e in encoded], dtype=np.float64)
    df = df.join(keys, on=["level", "logger", "method", "masked"], how="left", nulls_equal=True)

    sk = df.group_by("seq_idx", "key_idx").len()
    s_idx = sk.get_column("seq_idx").to_numpy().astype(np.int64)
    k_idx = sk.get_column("key_idx").to_numpy().astype(np.int64)
    cnt = sk.get_column("len").to_numpy().astype(np.float64)
    m = sp.csr_matrix((cnt, (s_idx, k_idx)), shape=(n_seq, n_keys))

    raw = np.zeros((n_seq, lay.width), dtype=np.float64)
    # templates: key -> raw column
    key_col = np.array([lay.template_column(int(t)) for t in key_tid], dtype=np.int64)
    np.add.at(raw, (s_idx, key_col[k_idx]), cnt)
    # ERROR families and stated HTTP status classes, per template (same tables as _fill_raw)
    fam_of = np.asarray(lay.tpl_err_family, dtype=np.int64)
    status_of = np.asarray(lay.tpl_status, dtype=np.int64)
    tid_k = key_tid[k_idx]
    for table, value, column in (
        (fam_of, 1, lay.err_handler), (fam_of, 2, lay.err_cache), (status_of, 4, lay.status4), (status_of, 5, lay.status5),
    ):
        hit = (tid_k >= 0) & (tid_k < table.size)
        hit[hit] = table[tid_k[hit]] == value
        np.add.at(raw[:, column], s_idx[hit], cnt[hit])
    # distinct template ids per sequence
    pairs = np.unique(np.stack([s_idx, key_tid[k_idx]]), axis=1)
    raw[:, lay.distinct] = np.bincount(pairs[0], minlength=n_seq)
    raw[:, lay.failure] = m @ key_failure
    # levels
    lv = df.group_by("seq_idx", "level").len()
    level_pos = {name: lay.level0 + i for i, name in enumerate(LEVELS)}
    for s, name, c in lv.iter_rows():
        if name in level_pos:
            raw[s, level_pos[name]] += c
    # error codes (distinct per event)
    codes = (
        df.select("seq_idx", "codes").explode("codes").drop_nulls("codes").group_by("seq_idx", "codes").len()
    )
    for s, code, c in codes.iter_rows():
        col = lay.code_column(code)
        raw[s, col] += c
        raw[s, lay.surprise] += c * lay.code_weight[col]
        if col in lay.code_status_col:
            raw[s, lay.code_status_col[col]] += c
    seq_cols = seqs.select("n_code_events", "n_stack_events", "n_stack_lines", "n_events", "duration_ms").to_numpy()
    raw[:, lay.code_events] = seq_cols[:, 0]
    raw[:, lay.stack_events] = seq_cols[:, 1]
    raw[:, lay.stack_lines] = seq_cols[:, 2]
    raw[:, lay.n_events] = seq_cols[:, 3]
    raw[:, lay.duration_ms] = seq_cols[:, 4]
    X = _features_from_raw(raw, lay)

    # --- hashing representation ------------------------------------------------------------------
    rows, cols, vals = [], [], []
    for i, (_tid, toks, _f) in enumerate(encoded):
        u, c = np.unique(np.asarray(toks, dtype=np.int64), return_counts=True)
        rows.append(np.full(len(u), i, dtype=np.int64))
        cols.append(u)
        vals.append(c.astype(np.float64))
    h = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_keys, spec.hash_dims)
    )
    xt = (m @ h).tocsr()
    xt.sum_duplicates()
    xt.sort_indices()
    totals = np.asarray(xt.sum(axis=1)).ravel()
    row_of_nz = np.repeat(np.arange(n_seq), np.diff(xt.indptr))
    xt.data = xt.data / totals[row_of_nz]

    # duration in numpy, not Polars: Polars may divide via a reciprocal, and the accumulator's
    # ``duration_s`` (Python float division) must be bit-identical.
    duration_s = seqs.get_column("duration_ms").to_numpy().astype(np.float64) / 1000.0
    meta = seqs.select(
        "seq_id", "run", "run_epoch", "test_case", "service", "window_start_ms", "n_events",
        pl.Series("duration_s", duration_s, dtype=pl.Float64),
        "n_stack_lines", "anomaly", "anomaly_service",
    ).with_columns(pl.col("n_events").cast(pl.Int64), pl.col("n_stack_lines").cast(pl.Int64))
    return FeatureMatrix(
        meta=meta,
        X=X,
        feature_names=spec.feature_names,
        X_tokens=xt,
        token_feature_names=tuple(spec.token_feature_names()),
        spec_fingerprint=spec.fingerprint(),
    )


def canary_features(meta: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    """The length/duration-only leakage canary: (n_events, duration_s) per sequence.

    A detector that does no better than a model on these two numbers has learned length, not
    behaviour (LogLead demo: ``sequence_lr_numeric`` reached accuracy 1.0 on v1 from length alone).
    Nothing else belongs here: stack-trace line counts, for example, measure exceptions, which is
    what the detectors are meant to find.
    """
    missing = [c for c in CANARY_COLUMNS if c not in meta.columns]
    if missing:
        raise DataLayoutError(f"canary_features: meta lacks columns {missing} (has {meta.columns})")
    x = meta.select(pl.col(c).cast(pl.Float64) for c in CANARY_COLUMNS).to_numpy()
    out: np.ndarray = np.ascontiguousarray(x, dtype=np.float64)
    return out, list(CANARY_FEATURES)
