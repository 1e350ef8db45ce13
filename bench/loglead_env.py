"""The LogLead baseline environment shared by the benchmarks.

LogLead 2.0.0 pins ``polars<2``, so it cannot live in our venv: the benchmarks run it in its own
venv under ``settings.cache_dir`` (created on first use) and talk to it through a child process
that prints one JSON line of figures.
"""

from __future__ import annotations

import json
import subprocess
import venv
from pathlib import Path

from shared.settings import Settings

LOGLEAD_SPEC = "loglead==2.0.0"
ROOT = Path(__file__).resolve().parent.parent


def loglead_python(settings: Settings, probe_module: str = "loglead.enhancers") -> Path:
    """The python of a venv with LogLead (created under settings.cache_dir on first use)."""
    env_dir = settings.cache_dir / "bench-loglead-venv"
    py = env_dir / "bin" / "python"
    ok = py.exists() and subprocess.run([py, "-c", f"import {probe_module}"], capture_output=True).returncode == 0
    if not ok:
        print(f"creating LogLead venv at {env_dir} ({LOGLEAD_SPEC}) …")
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
        subprocess.run([py, "-m", "pip", "install", "-q", LOGLEAD_SPEC], check=True)
    return py


def run_child(cmd: list[str]) -> dict[str, float]:
    """Run a measuring child process; its last stdout line is a JSON object of figures."""
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])
