"""Generated documentation stays in step with the code."""

from pathlib import Path

from faissx_core.cli import types_markdown
from faissx_core.plugins import PluginRegistry

ROOT = Path(__file__).parents[1]


def test_index_types_table_is_current():
    discovered = PluginRegistry()
    builtin = [name for name, info in discovered.plugins.items() if info.dist.startswith("faissx ")]
    table = types_markdown(PluginRegistry(only=builtin))
    doc = (ROOT / "docs" / "index-types.md").read_text()
    assert table in doc, "regenerate the table with `faissx plugins --markdown`"
