"""How close generated `correct` token traffic is to the real LO2 token log (22,660 real lines).

Templates are (level, logger, method, masked message) with ``shared.masking.mask_message`` (ids,
numbers, UUIDs, base64, credentials masked).  Measured on seed 42 when this test was written:
coverage 0.996 of real lines, total-variation distance 0.019 between the template distributions
(see docs/generator.md); the thresholds below leave room for seeds and small model changes while
still failing if a request shape, the Hazelcast share or the ERROR noise goes wrong.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest

from batch.generate import GenerateConfig, generate
from shared.masking import mask_message
from shared.parsing import parse_line

Template = tuple[str, str, str, str]


def _templates(lines: Iterable[str]) -> Counter[Template]:
    out: Counter[Template] = Counter()
    for ln in lines:
        p = parse_line(ln)
        if p is not None:
            out[(p.level, p.logger, p.method, mask_message(p.message))] += 1
    return out


def _share(c: Counter[Template], pred: object) -> float:
    return sum(n for t, n in c.items() if pred(t)) / sum(c.values())  # type: ignore[operator]


@pytest.fixture(scope="module")
def real(real_token_sample: Path) -> Counter[Template]:
    return _templates(real_token_sample.read_text(encoding="utf-8").splitlines())


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Counter[Template]:
    """`correct` of a v1 run (60 s like the real sample), token service only, dense traffic.

    The start-up block is skipped (the real sample starts mid-run, after start-up).
    """
    out = tmp_path_factory.mktemp("realism")
    generate(GenerateConfig(out=out, runs=1, layout="v1", errors_per_run=0, rate=20.0, services=("token",),
                            seed=42, aux_files=False))
    lines = next(out.glob("*/correct/light-oauth2-oauth2-token-1.log")).read_text(encoding="utf-8").splitlines()
    events = [ln for ln in lines if " [main] " not in ln]
    return _templates(events)


def test_generated_token_traffic_covers_the_real_templates(real: Counter[Template], generated: Counter[Template]) -> None:
    coverage = sum(n for t, n in real.items() if t in generated) / sum(real.values())
    assert sum(generated.values()) > 4000
    assert coverage >= 0.97, f"only {coverage:.3f} of real token lines have a template the generator produces"
    # and nothing made up: almost every generated line has a real template too
    reverse = sum(n for t, n in generated.items() if t in real) / sum(generated.values())
    assert reverse >= 0.99, f"{1 - reverse:.3f} of generated token lines have templates the real log lacks"


def test_template_frequencies_are_similar(real: Counter[Template], generated: Counter[Template]) -> None:
    rt, gt = sum(real.values()), sum(generated.values())
    tvd = 0.5 * sum(abs(real[t] / rt - generated[t] / gt) for t in set(real) | set(generated))
    assert tvd <= 0.06, f"total-variation distance of template frequencies {tvd:.3f}"
    for template, n in real.most_common(10):  # the big ten each within ±25 % relative
        assert abs(generated[template] / gt - n / rt) <= 0.25 * n / rt, template


def test_hazelcast_and_error_shares_are_like_the_real_log(real: Counter[Template], generated: Counter[Template]) -> None:
    def is_cache(t: Template) -> bool:
        return "MapStore" in t[1]

    def is_error(t: Template) -> bool:
        return t[0] == "ERROR"

    real_cache, gen_cache = _share(real, is_cache), _share(generated, is_cache)
    real_err, gen_err = _share(real, is_error), _share(generated, is_error)
    assert 0.5 * real_cache <= gen_cache <= 2 * real_cache, (real_cache, gen_cache)
    assert 0.3 * real_err <= gen_err <= 3 * real_err, (real_err, gen_err)


def test_request_shape_like_the_real_log(real_token_sample: Path, tmp_path: Path) -> None:
    """Lines per correlation id: the real log has mostly 5-line groups (3,567 of 4,324)."""
    def sizes(lines: Iterable[str]) -> Counter[int]:
        per_cid: Counter[str] = Counter()
        for ln in lines:
            p = parse_line(ln)
            if p is not None and p.correlation_id:
                per_cid[p.correlation_id] += 1
        return Counter(per_cid.values())

    generate(GenerateConfig(out=tmp_path, runs=1, layout="v1", errors_per_run=0, rate=5.0, services=("token",),
                            seed=1, aux_files=False))
    gen = sizes(next(tmp_path.glob("*/correct/light-oauth2-oauth2-token-1.log")).read_text().splitlines())
    rea = sizes(real_token_sample.read_text(encoding="utf-8").splitlines())
    share5_real = rea[5] / sum(rea.values())
    share5_gen = gen[5] / sum(gen.values())
    assert abs(share5_gen - share5_real) <= 0.1, (share5_real, share5_gen)
