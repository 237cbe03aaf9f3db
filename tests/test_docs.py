"""The README's generated blocks (configuration, column dictionaries) match the code."""

from __future__ import annotations

from pathlib import Path

from ops.docs import config_rows, render_readme

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_generated_blocks_are_current() -> None:
    text = README.read_text()
    assert render_readme(text) == text, "README is stale: run `python -m ops.docs readme`"


def test_every_setting_is_documented() -> None:
    undocumented = [env for env, _default, meaning in config_rows() if not meaning.strip()]
    assert undocumented == []
