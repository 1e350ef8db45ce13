"""Template vocabulary: learned with Drain3 on unique masked messages, frozen, JSON round trip."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from shared.errors import ModelLoadError
from shared.masking import mask_message
from shared.parsing import parse_line
from shared.templates import (
    FIRST_TEMPLATE_ID,
    RARE_ID,
    UNSEEN_ID,
    DrainParams,
    TemplateVocabulary,
    learn_vocabulary,
)


@pytest.fixture(scope="module")
def real_counts(real_token_sample: Path) -> list[tuple[str, str, str, str, int]]:
    c: Counter[tuple[str, str, str, str]] = Counter()
    for line in real_token_sample.read_text(encoding="utf-8").splitlines():
        p = parse_line(line)
        if p is not None:
            c[(p.level, p.logger, p.method, mask_message(p.message))] += 1
    return [(*k, n) for k, n in sorted(c.items())]


def test_real_sample_templates(real_counts: list[tuple[str, str, str, str, int]]) -> None:
    vocab = learn_vocabulary(real_counts, min_support=5)
    readable = [vocab.describe(t.id) for t in vocab.templates]
    assert "ERROR Oauth2TokenPostHandler handleRequest - ApiException" in readable
    assert "DEBUG RefreshTokenMapStore load - Load:<UUID>" in readable
    # ids follow training frequency; every training message maps back to its own template
    supports = [t.support for t in vocab.templates]
    assert supports == sorted(supports, reverse=True)
    assert [t.id for t in vocab.templates] == list(range(FIRST_TEMPLATE_ID, FIRST_TEMPLATE_ID + vocab.size))
    total = sum(n for *_, n in real_counts)
    assert sum(supports) + sum(t.support for t in vocab.rare_templates) == total
    for level, logger, method, masked, n in real_counts:
        tid = vocab.lookup(level, logger, method, masked)
        if n >= 5:
            assert tid >= FIRST_TEMPLATE_ID
    # the two status.yml INFO lines appear once each: rare
    assert vocab.lookup(
        "INFO", "com.networknt.config.Config", "getConfigStream", "Config loaded from default folder for status.yml"
    ) == RARE_ID


def test_level_logger_and_method_are_part_of_the_identity(real_counts: list[tuple[str, str, str, str, int]]) -> None:
    vocab = learn_vocabulary(real_counts, min_support=5)
    api = vocab.lookup("ERROR", "c.n.o.t.h.Oauth2TokenPostHandler", "handleRequest", "ApiException")
    assert api >= FIRST_TEMPLATE_ID
    assert vocab.lookup("WARN", "c.n.o.t.h.Oauth2TokenPostHandler", "handleRequest", "ApiException") == UNSEEN_ID
    assert vocab.lookup("ERROR", "c.n.o.t.h.Oauth2TokenPostHandler", "handleToken", "ApiException") == UNSEEN_ID
    assert vocab.lookup("ERROR", "c.n.o.t.h.Oauth2TokenPostHandler", "handleRequest", "SomethingElse") == UNSEEN_ID


def test_drain_generalises_and_unknown_values_match_wildcards() -> None:
    rows = [("INFO", "a.B", "run", f"user {name} logged in from web", 3) for name in ("alice", "bob", "carol", "dave")]
    rows += [("INFO", "a.B", "run", "server started", 10)]
    vocab = learn_vocabulary(rows, min_support=5)
    texts = {t.text for t in vocab.templates}
    assert "user <*> logged in from web" in texts
    tid = vocab.lookup("INFO", "a.B", "run", "user mallory logged in from web")
    assert vocab.describe(tid) == "INFO B run - user <*> logged in from web"
    assert vocab.lookup("INFO", "a.B", "run", "user mallory logged out from web") == UNSEEN_ID
    assert vocab.lookup("INFO", "a.B", "run", "user mallory logged in from web today") == UNSEEN_ID


def test_min_support_sends_rare_templates_to_the_rare_bucket() -> None:
    rows = [("INFO", "a.B", "m", "often", 50), ("INFO", "a.B", "m", "seldom event here", 2)]
    vocab = learn_vocabulary(rows, min_support=3)
    assert vocab.lookup("INFO", "a.B", "m", "often") == FIRST_TEMPLATE_ID
    assert vocab.lookup("INFO", "a.B", "m", "seldom event here") == RARE_ID
    assert vocab.size == 1 and len(vocab.rare_templates) == 1
    assert "rare" in vocab.describe(RARE_ID) and "unseen" in vocab.describe(UNSEEN_ID)
    with pytest.raises(KeyError):
        vocab.template(RARE_ID)
    relaxed = learn_vocabulary(rows, min_support=1)
    assert relaxed.lookup("INFO", "a.B", "m", "seldom event here") >= FIRST_TEMPLATE_ID


def test_json_round_trip_keeps_lookups_and_fingerprint(real_counts: list[tuple[str, str, str, str, int]]) -> None:
    vocab = learn_vocabulary(real_counts, min_support=5)
    text = vocab.to_json()
    back = TemplateVocabulary.from_json(text)
    assert back == vocab
    assert back.fingerprint() == vocab.fingerprint()
    assert back.to_json() == text
    json.loads(text)  # plain JSON, no pickled objects
    assert "py/object" not in text
    for level, logger, method, masked, _ in real_counts:
        assert back.lookup(level, logger, method, masked) == vocab.lookup(level, logger, method, masked)
    # the same input gives the same vocabulary (deterministic), another min_support another fingerprint
    assert learn_vocabulary(list(reversed(real_counts)), min_support=5).fingerprint() == vocab.fingerprint()
    assert learn_vocabulary(real_counts, min_support=2).fingerprint() != vocab.fingerprint()
    assert learn_vocabulary(real_counts, min_support=5, drain=DrainParams(sim_th=0.7)).drain.sim_th == 0.7


def test_malformed_json_is_a_clear_error(real_counts: list[tuple[str, str, str, str, int]]) -> None:
    data = learn_vocabulary(real_counts, min_support=5).to_dict()
    with pytest.raises(ModelLoadError, match="schema_version"):
        TemplateVocabulary.from_dict({**data, "schema_version": 99})
    with pytest.raises(ModelLoadError, match="malformed"):
        TemplateVocabulary.from_dict({k: v for k, v in data.items() if k != "templates"})
    broken = json.loads(json.dumps(data))
    broken["templates"][0][0] = 77
    with pytest.raises(ModelLoadError, match="without gaps"):
        TemplateVocabulary.from_dict(broken)


def test_lookup_cache_stays_bounded() -> None:
    vocab = TemplateVocabulary.from_dict(learn_vocabulary([("INFO", "a.B", "m", "x <*>", 9)]).to_dict())
    small = TemplateVocabulary(
        vocab.templates, vocab.rare_templates, {}, min_support=vocab.min_support, drain=vocab.drain, cache_size=10
    )
    for i in range(100):
        assert small.lookup("INFO", "a.B", "m", f"x v{i}") == FIRST_TEMPLATE_ID
        assert small.lookup("INFO", "a.B", "m", f"y v{i}") == UNSEEN_ID
    assert len(small._cache) <= 10
