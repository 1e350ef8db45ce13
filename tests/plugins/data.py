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
