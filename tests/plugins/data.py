"""Data fixtures: settings, the real LO2 samples, generated datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def samples_dir(settings: Settings) -> Path:
    """The real LO2 fragments (../shared/lo2-samples by default, LO2_SAMPLES_DIR to move them)."""
    path = settings.samples_dir
    if not path.is_dir():
        pytest.fail(f"real LO2 samples not found at {path}; set LO2_SAMPLES_DIR to their folder")
    return path


@pytest.fixture(scope="session")
def real_token_sample(samples_dir: Path) -> Path:
    return samples_dir / "v1_light-oauth2-data-1719592986__correct__light-oauth2-oauth2-token-1.timestamped-lines.log"


# --- generated datasets (lo2 generate) -----------------------------------------------------------
#: Seeds and sizes of the session datasets; tests may rely on them (e.g. the midnight run index).
GENERATED_SEED = 7
GENERATED_V2_RUNS = 6
GENERATED_V2_ERRORS_PER_RUN = 4
GENERATED_V1_RUNS = 2


@pytest.fixture(scope="session")
def generated_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small LO2v2 dataset: 6 runs × (correct + 4 seed-chosen errors) × 7 services.

    Returns the root folder (``LO2_run_<epoch>/`` folders + ``ground_truth.json``).  Run index 3
    (``GENERATED_V2_RUNS // 2``) crosses UTC midnight; run 0 holds the start-up lines in its first
    test.  Generated once per session in about a second.
    """
    from batch.generate import GenerateConfig, generate

    root = tmp_path_factory.mktemp("generated_v2")
    generate(GenerateConfig(out=root, runs=GENERATED_V2_RUNS, layout="v2",
                            errors_per_run=GENERATED_V2_ERRORS_PER_RUN, seed=GENERATED_SEED))
    return root


@pytest.fixture(scope="session")
def generated_v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small LO2 v1 dataset: 2 runs × (correct + all 53 errors, fixed order) × 7 services.

    ``correct`` lasts 60 s and carries the start-up lines, every error 10 s (the v1 leak); run 1
    crosses UTC midnight.  Generated once per session in about a second.
    """
    from batch.generate import GenerateConfig, generate

    root = tmp_path_factory.mktemp("generated_v1")
    generate(GenerateConfig(out=root, runs=GENERATED_V1_RUNS, layout="v1", seed=GENERATED_SEED))
    return root
