"""A small HTML vocabulary for the report: one self-contained page, figures inline as base64 PNG,
a table of contents linking every heading."""

from __future__ import annotations

import base64
import html
import re

BODY_WIDTH = 1300  # px, the page body's max-width: figures are drawn no wider, and CSS shrinks any that are
STYLE = f"""
body {{ font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 8px; max-width: {BODY_WIDTH}px; color: #222; }}
h1 {{ border-bottom: 2px solid #444; }}
h2 {{ border-bottom: 1px solid #bbb; margin-top: 2em; }}
table {{ border-collapse: collapse; margin: 0.5em 0; display: block; max-width: 100%; overflow-x: auto; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f2f2f2; }}
figure {{ display: inline-block; margin: 4px; max-width: calc(100% - 8px); vertical-align: top; }}
img {{ max-width: 100%; height: auto; }}
figcaption {{ font-size: 0.85em; color: #555; max-width: 900px; }}
.grid {{ display: flex; flex-wrap: wrap; }}
.tile {{ margin: 2px; width: 100px; text-align: center; }}
.tile img {{ width: 96px; image-rendering: pixelated; }}
.tile figcaption {{ font-size: 0.75em; }}
.note {{ background: #fff4d6; border-left: 4px solid #e0a800; padding: 6px 10px; }}
nav ul {{ margin: 0.2em 0; }}
""".strip()


def escape(text: object) -> str:
    return html.escape(str(text))


def page(title: str, body: list[str]) -> str:
    """A complete HTML document (no external resources), a table of contents under its title."""
    text = "\n".join(body)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
            f"<style>\n{STYLE}\n</style>\n</head>\n<body>\n<h1>{escape(title)}</h1>\n{contents(text)}\n{text}"
            "\n</body>\n</html>\n")


HEADING = re.compile(r'<h([2-4]) id="([^"]+)">(.*?)</h\1>')


def contents(text: str) -> str:
    """A nested list linking every heading of ``text`` that has an id (levels 2 to 4)."""
    out, depth = ['<nav id="contents"><strong>Contents</strong><ul>'], 1
    for level, anchor, label in HEADING.findall(text):
        level = int(level) - 1
        out += ["<ul>"] * (level - depth) + ["</ul>"] * (depth - level)
        depth = level
        out.append(f'<li><a href="#{anchor}">{label}</a></li>')
    return "".join(out + ["</ul>"] * depth + ["</nav>"])


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
    """Items side by side, wrapping at the body's width."""
    return '<div class="grid">' + "".join(items) + "</div>"


def tile(png: bytes, alt: str, caption: str) -> str:
    """A small captioned image (a stimulus) for a :func:`grid`."""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure class="tile"><img src="data:image/png;base64,{data}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")
