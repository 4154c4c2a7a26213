"""MkDocs hooks (mkdocs.yml `hooks:`): pages that hold a reference marker get it generated from the code."""
from __future__ import annotations

MARKERS = {"<!-- reference: config -->": "config_reference", "<!-- reference: cli -->": "cli_reference",
           "<!-- reference: python -->": "python_reference"}


def on_page_markdown(markdown: str, page, config, files) -> str:
    import continual.reference as reference

    for marker, function in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, getattr(reference, function)())
    return markdown
