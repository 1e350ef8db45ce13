"""A frozen vocabulary of log templates, learned with Drain3 on masked messages.

Why frozen: a model is trained on features computed with one vocabulary; if the worker kept mining,
template ids (and so feature columns) would drift away from what the model saw.  So Drain3 runs
once, at training time, and the result is stored as plain JSON (never jsonpickle/pickle of Drain
state, which is an unsafe deserialiser and ties us to Drain's internals).

Why fast: Drain3 runs over the *unique* masked messages only (tens to a few thousand, not
millions of lines), one Drain tree per ``(level, logger, method)``; that triple is part of a
template's identity, so ``ERROR ... handleRequest - ApiException`` and a DEBUG line with the same
text never merge.  Lookups go through a dict cache.

Ids: ``0`` = unseen (no template matches), ``1`` = rare (a template seen fewer than
``min_support`` times in training), ``2..`` = templates in decreasing training frequency.
Unknown masked messages are matched like Drain3's ``match()``: same token count and every token
equal to the template's or the template has ``<*>`` there; the most specific match wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.errors import ModelLoadError

log = logging.getLogger(__name__)

UNSEEN_ID = 0
RARE_ID = 1
FIRST_TEMPLATE_ID = 2
WILDCARD = "<*>"
SCHEMA_VERSION = 1

#: (level, logger, method) – the part of a template's identity that is not the message.
GroupKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Template:
    """One mined template: its group, its Drain text (tokens joined by one space) and support."""

    id: int
    level: str
    logger: str
    method: str
    text: str
    support: int

    @property
    def tokens(self) -> tuple[str, ...]:
        return tuple(self.text.split())

    def readable(self) -> str:
        """``ERROR Oauth2TokenPostHandler handleRequest - ApiException`` (short logger name)."""
        return f"{self.level} {self.logger.rsplit('.', 1)[-1]} {self.method} - {self.text}"


@dataclass(frozen=True, slots=True)
class DrainParams:
    """Drain3 parameters used when the vocabulary was learned (stored for provenance)."""

    sim_th: float = 0.6
    depth: int = 4
    max_children: int = 100


class TemplateVocabulary:
    """Frozen templates + lookup (masked message -> template id).  Build with :func:`learn_vocabulary`."""

    def __init__(
        self,
        templates: Iterable[Template],
        rare_templates: Iterable[Template],
        known: dict[tuple[str, str, str, str], int],
        *,
        min_support: int,
        drain: DrainParams,
        cache_size: int = 200_000,
    ) -> None:
        self.templates: tuple[Template, ...] = tuple(sorted(templates, key=lambda t: t.id))
        self.rare_templates: tuple[Template, ...] = tuple(rare_templates)
        self.min_support = min_support
        self.drain = drain
        self._known = dict(known)
        self._cache: dict[tuple[str, str, str, str], int] = dict(known)
        self._cache_size = max(cache_size, len(known) + 1)
        # (group, n_tokens) -> [(template tokens, id, n_wildcards)] for matching unknown messages.
        self._index: dict[tuple[GroupKey, int], list[tuple[tuple[str, ...], int, int]]] = defaultdict(list)
        for t in self.templates:
            self._add_to_index(t, t.id)
        for t in self.rare_templates:
            self._add_to_index(t, RARE_ID)
        for entries in self._index.values():
            entries.sort(key=lambda e: (e[2], e[1]))  # most specific first, then lowest id
        for i, t in enumerate(self.templates):
            if t.id != FIRST_TEMPLATE_ID + i:
                raise ModelLoadError(
                    f"template ids must be {FIRST_TEMPLATE_ID}..{FIRST_TEMPLATE_ID + len(self.templates) - 1} "
                    f"without gaps; found id {t.id} at position {i}"
                )

    def _add_to_index(self, t: Template, tid: int) -> None:
        tokens = t.tokens
        self._index[((t.level, t.logger, t.method), len(tokens))].append(
            (tokens, tid, sum(tok == WILDCARD for tok in tokens))
        )

    # --- lookup ------------------------------------------------------------------------------
    def lookup(self, level: str, logger: str, method: str, masked: str) -> int:
        """Template id of a masked message (``UNSEEN_ID`` / ``RARE_ID`` for the two buckets)."""
        key = (level, logger, method, masked)
        tid = self._cache.get(key)
        if tid is None:
            tid = self._match(key)
            if len(self._cache) >= self._cache_size:  # bounded: drop the unseen entries, keep training ones
                self._cache = dict(self._known)
            self._cache[key] = tid
        return tid

    def _match(self, key: tuple[str, str, str, str]) -> int:
        tokens = key[3].split()
        for t_tokens, tid, _ in self._index.get(((key[0], key[1], key[2]), len(tokens)), ()):
            if all(a == b or a == WILDCARD for a, b in zip(t_tokens, tokens, strict=True)):
                return tid
        return UNSEEN_ID

    # --- description -------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of real (non-rare) templates."""
        return len(self.templates)

    @property
    def n_ids(self) -> int:
        """Number of ids including the unseen and rare buckets."""
        return FIRST_TEMPLATE_ID + len(self.templates)

    def template(self, tid: int) -> Template:
        if not FIRST_TEMPLATE_ID <= tid < self.n_ids:
            raise KeyError(f"template id {tid} is not a real template (expected {FIRST_TEMPLATE_ID}..{self.n_ids - 1})")
        return self.templates[tid - FIRST_TEMPLATE_ID]

    def describe(self, tid: int) -> str:
        """Readable text of a template id, for explanations."""
        if tid == UNSEEN_ID:
            return "(unseen template)"
        if tid == RARE_ID:
            return f"(rare template, seen < {self.min_support} times in training)"
        return self.template(tid).readable()

    # --- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def tpl(t: Template) -> list[Any]:
            return [t.id, t.level, t.logger, t.method, t.text, t.support]

        return {
            "schema_version": SCHEMA_VERSION,
            "min_support": self.min_support,
            "drain": {"sim_th": self.drain.sim_th, "depth": self.drain.depth, "max_children": self.drain.max_children},
            "templates": [tpl(t) for t in self.templates],
            "rare_templates": [tpl(t) for t in self.rare_templates],
            "known": sorted([*k, v] for k, v in self._known.items()),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemplateVocabulary:
        try:
            if data["schema_version"] != SCHEMA_VERSION:
                raise ModelLoadError(
                    f"template vocabulary schema_version {data['schema_version']!r} is not supported "
                    f"(expected {SCHEMA_VERSION})"
                )
            d = data["drain"]
            return cls(
                [Template(*row) for row in data["templates"]],
                [Template(*row) for row in data["rare_templates"]],
                {(r[0], r[1], r[2], r[3]): int(r[4]) for r in data["known"]},
                min_support=int(data["min_support"]),
                drain=DrainParams(float(d["sim_th"]), int(d["depth"]), int(d["max_children"])),
            )
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ModelLoadError(f"template vocabulary JSON is malformed: {exc!r}") from exc

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> TemplateVocabulary:
        return cls.from_dict(json.loads(text))

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON: equal fingerprints = identical lookups."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TemplateVocabulary) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"TemplateVocabulary({self.size} templates, {len(self.rare_templates)} rare, "
            f"min_support={self.min_support})"
        )


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no spaces: the form fingerprints are computed on."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def learn_vocabulary(
    masked_counts: Iterable[tuple[str, str, str, str, int]],
    *,
    min_support: int = 5,
    drain: DrainParams | None = None,
) -> TemplateVocabulary:
    """Mine templates from ``(level, logger, method, masked_message, n_events)`` rows.

    Each row is one *unique* masked message with its number of training events; Drain3 sees each
    unique message once (so mining costs O(unique messages)), and support is summed in events.
    """
    from drain3.drain import Drain  # heavy-ish import, only needed for training

    params = drain or DrainParams()
    if min_support < 1:
        from shared.errors import ConfigError

        raise ConfigError(f"min_support must be >= 1, got {min_support}")
    by_group: dict[GroupKey, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for level, logger_, method, masked, n in masked_counts:
        by_group[(level, logger_, method)][masked] += int(n)

    # (group, drain cluster id) -> support, template text; message -> (group, cluster id)
    clusters: list[tuple[GroupKey, str, int, list[str]]] = []
    for group in sorted(by_group):
        msgs = by_group[group]
        miner = Drain(
            sim_th=params.sim_th, depth=params.depth, max_children=params.max_children, param_str=WILDCARD
        )
        members: dict[int, list[str]] = defaultdict(list)
        # Deterministic order: frequent messages first (they shape the templates), then text.
        for msg in sorted(msgs, key=lambda m: (-msgs[m], m)):
            cluster, _ = miner.add_log_message(msg)
            members[cluster.cluster_id].append(msg)
        for cid, ms in members.items():
            text = " ".join(miner.id_to_cluster[cid].log_template_tokens)
            clusters.append((group, text, sum(msgs[m] for m in ms), ms))

    # Two clusters can end with the same text (Drain's tree splits on the first tokens); merge them.
    merged: dict[tuple[GroupKey, str], tuple[int, list[str]]] = {}
    for group, text, support, ms in clusters:
        old = merged.get((group, text), (0, []))
        merged[(group, text)] = (old[0] + support, old[1] + ms)

    ordered = sorted(merged.items(), key=lambda kv: (-kv[1][0], kv[0][0], kv[0][1]))
    templates: list[Template] = []
    rare: list[Template] = []
    known: dict[tuple[str, str, str, str], int] = {}
    for (group, text), (support, ms) in ordered:
        if support >= min_support:
            t = Template(FIRST_TEMPLATE_ID + len(templates), *group, text, support)
            templates.append(t)
            tid = t.id
        else:
            rare.append(Template(RARE_ID, *group, text, support))
            tid = RARE_ID
        for m in ms:
            known[(*group, m)] = tid
    log.info(
        "learned %d templates (+%d rare, support < %d) from %d unique masked messages",
        len(templates), len(rare), min_support, len(known),
    )
    return TemplateVocabulary(templates, rare, known, min_support=min_support, drain=params)
