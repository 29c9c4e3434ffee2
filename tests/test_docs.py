"""The repository explains itself: every `docs/<file>.md#<id>` a comment or document cites exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"docs/([\w-]+\.md)#([\w.-]+)")


def test_every_citation_of_the_docs_resolves() -> None:
    sources = [p for d in ("auth", "transports", "server", "tests", "scripts", "docs") for p in (ROOT / d).rglob("*")
               if p.suffix in (".py", ".md") and ".venv" not in p.parts and "node_modules" not in p.parts]
    cited = [(path, doc, anchor) for path in [*sources, ROOT / "README.md"]
             for doc, anchor in CITATION.findall(path.read_text(encoding="utf-8"))]
    assert cited, "the code cites the docs"
    broken = [f"{path.relative_to(ROOT)}: docs/{doc}#{anchor}" for path, doc, anchor in cited
              if not (ROOT / "docs" / doc).exists()
              or f'<a id="{anchor}"></a>' not in (ROOT / "docs" / doc).read_text(encoding="utf-8")]
    assert not broken, broken


def test_every_setting_is_in_the_readme_table() -> None:
    from server.config import Settings

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name in Settings.model_fields if f"| `{name}` |" not in readme]
    assert not missing, f"settings missing from the README's table: {missing}"
