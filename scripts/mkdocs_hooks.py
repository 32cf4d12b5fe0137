"""MkDocs hooks (``mkdocs.yml``: ``hooks``): publish on the site the files that
live outside ``docs/`` and that the guides show or link to, without copying
them into ``docs/`` (where they would go stale).

* ``SECURITY.md`` becomes ``security.md`` and ``protocols/secagg/v1/SPEC.md``
  becomes ``spec.md``; their links to repository files that are not pages
  (the ``.proto``, the vector and schema directories) become code spans
  naming the file, since the site cannot serve a directory.
* ``benchmarks/results/time_vs_n.png``, ``benchmarks/results/scaling/scaling.png``
  and the JSON Schemas (``securefl/schemas/*.schema.json``) are served at
  the same paths, and the
  guides' ``../benchmarks/results/`` and ``../securefl/schemas/`` links
  (right on GitHub) point at them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent

PAGES = {
    "security.md": "SECURITY.md",
    "spec.md": "protocols/secagg/v1/SPEC.md",
}
"""Site page -> repository file."""

ASSETS = ["benchmarks/results/time_vs_n.png", "benchmarks/results/scaling/scaling.png",
          "securefl/schemas/ledger-record.schema.json",
          "securefl/schemas/metrics.schema.json"]
"""Repository files served at the same path."""

_REPO_LINK = re.compile(r"\[([^\]]+)\]\((?!https?://|#)([^)\s]+)\)")


def on_files(files: Files, config: Any) -> Files:
    """Add the pages and assets that live outside ``docs/``."""
    for uri, source in PAGES.items():
        files.append(File.generated(config, uri, abs_src_path=str(ROOT / source)))
    for uri in ASSETS:
        files.append(File.generated(config, uri, abs_src_path=str(ROOT / uri)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Point repository-relative links at what the site serves."""
    markdown = markdown.replace("](../benchmarks/results/", "](benchmarks/results/")
    markdown = markdown.replace("](../securefl/schemas/", "](securefl/schemas/")
    if page.file.src_uri not in PAGES:
        return markdown
    source_dir = Path(PAGES[page.file.src_uri]).parent

    def relink(match: re.Match[str]) -> str:
        text, target = match.group(1), match.group(2)
        path = target.partition("#")[0]
        if path.endswith(".md") or not path:
            return match.group(0)
        return f"{text} (`{(source_dir / path).as_posix()}`)"

    return _REPO_LINK.sub(relink, markdown)
