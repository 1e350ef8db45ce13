"""The README documents every setting and every command, and CI runs the README's test command."""

from __future__ import annotations

import re

from lo2.cli import COMMANDS
from shared.settings import PROJECT_ROOT, Settings

README = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_readme() -> None:
    missing = [f"LO2_{name.upper()}" for name in Settings.model_fields if f"`LO2_{name.upper()}" not in README]
    assert not missing, f"README settings table lacks {missing}; regenerate it with shared.settings.settings_table_markdown()"


def test_every_command_is_in_the_readme() -> None:
    missing = [name for name, _, _ in COMMANDS if f"lo2 {name}" not in README]
    assert not missing, f"README does not mention {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (PROJECT_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_cmds = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.lstrip().startswith(("#", "set ", "cd "))]
    assert ci_cmds == ["make test"]
    assert re.search(r"^make test\b", README, re.MULTILINE)
    assert re.search(r"^make demo\b", README, re.MULTILINE)
