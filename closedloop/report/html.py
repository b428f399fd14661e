"""A small HTML vocabulary for the report: one self-contained page, figures inline as base64 PNG."""

from __future__ import annotations

import base64
import html

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
h1 { border-bottom: 2px solid #444; }
h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
figure { display: inline-block; margin: 4px; }
figcaption { font-size: 0.85em; color: #555; max-width: 900px; }
.grid { display: flex; flex-wrap: wrap; }
.note { background: #fff4d6; border-left: 4px solid #e0a800; padding: 6px 10px; }
""".strip()


def escape(text: object) -> str:
    return html.escape(str(text))


def page(title: str, body: list[str]) -> str:
    """A complete HTML document (no external resources)."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
            f"<style>\n{STYLE}\n</style>\n</head>\n<body>\n<h1>{escape(title)}</h1>\n" + "\n".join(body)
            + "\n</body>\n</html>\n")


def heading(level: int, text: str, anchor: str | None = None) -> str:
    ident = f' id="{escape(anchor)}"' if anchor else ""
    return f"<h{level}{ident}>{escape(text)}</h{level}>"


def paragraph(text: str, note: bool = False) -> str:
    return f'<p class="note">{escape(text)}</p>' if note else f"<p>{escape(text)}</p>"


def table(rows: list[list[object]], header: list[object] | None = None) -> str:
    """A table of escaped cells; ``header`` becomes the first row."""
    head = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def figure(png: bytes, alt: str, caption: str | None = None) -> str:
    """An inline PNG image (base64 data URI) with an optional caption."""
    data = base64.b64encode(png).decode("ascii")
    text = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}">{text}</figure>'


def grid(items: list[str]) -> str:
    return '<div class="grid">' + "".join(items) + "</div>"
