"""The README's "Use the losses in your own JAX code" example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## Use the losses in your own JAX code"


def readme_example(heading: str = HEADING) -> str:
    """The first ```python block after `heading` and before the next '## ' heading."""
    text = README.read_text()
    assert heading in text, f"{README}: heading '{heading}' missing"
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"{README}: no ```python block under '{heading}'"
    return match.group(1)


def test_losses_example_runs(capsys):
    code = readme_example()
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, f"{README}:{HEADING}", "exec"), namespace)
    assert "synthesis loss" in capsys.readouterr().out
