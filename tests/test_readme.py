"""The README's "Use the losses in your own JAX code" example runs as written, and its test
command is the one CI runs."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## Use the losses in your own JAX code"


def readme_block(heading: str, lang: str = "python") -> str:
    """The first ```{lang} block after `heading` and before the next '## ' heading."""
    text = README.read_text()
    assert heading in text, f"{README}: heading '{heading}' missing"
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert match, f"{README}: no ```{lang} block under '{heading}'"
    return match.group(1)


def test_losses_example_runs(capsys):
    code = readme_block(HEADING)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, f"{README}:{HEADING}", "exec"), namespace)
    assert "synthesis loss" in capsys.readouterr().out


def test_ci_runs_exactly_the_readme_test_command():
    command = readme_block("## Run the tests", "bash").strip()
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == command
    if " -n " in command:  # pytest-xdist comes with requirements-dev.txt's [dev] extra
        assert '"pytest-xdist' in (README.parent / "pyproject.toml").read_text()
