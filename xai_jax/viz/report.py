"""A self-contained HTML report: headings, paragraphs, tables and embedded PNG figures."""

from __future__ import annotations

import base64
import html
from typing import Mapping, Sequence

_STYLE = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3;padding:0 .2em}"""


class Report:
    """Collects sections and renders one HTML file with every figure inlined (no side files to lose)."""

    def __init__(self, title: str):
        self.title = title
        self._parts: list[str] = []

    def heading(self, text: str) -> None:
        self._parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str) -> None:
        self._parts.append(f"<p>{html.escape(text)}</p>")

    def table(self, rows: Sequence[Mapping[str, object]]) -> None:
        if not rows:
            return
        columns = list(rows[0])
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
                       for r in rows)
        self._parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def figure(self, png: bytes, caption: str = "") -> None:
        data = base64.b64encode(png).decode("ascii")
        self._parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def render(self) -> str:
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"
                + "\n".join(self._parts) + "</body></html>")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
