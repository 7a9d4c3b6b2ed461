"""Small HTML helpers shared by every arbg page: the evaluation report, the benchmark, ablation
and zero-shot tables.

Every value becomes a table cell or a sentence: numbers are formatted (4 significant digits),
mappings become nested key/value tables, lists of mappings become tables with one row per item,
long numeric lists are summarised. Text is escaped without turning quotes into entities, so a
page never shows a Python ``repr`` or ``&#x27;``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CSS = """
body{font-family:system-ui,sans-serif;max-width:%(width)sem;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;margin:0.4em 0 1.2em 0}
td,th{border:1px solid #bbb;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#eee} td:first-child,th:first-child{text-align:left}
table.kv td{text-align:left} table.kv td:first-child{font-weight:600;background:#fafafa}
table table{margin:0} table table td{border-color:#ddd}
img{max-width:100%%;border:1px solid #ddd;margin:4px 0}
.summary{border:2px solid #446;border-radius:6px;padding:0.3em 1em;background:#f6f7fb}
.warning{border:2px solid #b33;border-radius:6px;padding:0.2em 1em;background:#fdf1f1;color:#611}
.ok{color:#185c18;font-weight:600} .bad{color:#a02020;font-weight:600}
.note{color:#555;font-size:90%%}
"""

MAX_LIST = 8  # longer numeric lists are summarised


def esc(text: Any) -> str:
    """HTML-escape ``text`` for element content (quotes are left alone: no ``&#x27;``)."""
    return html.escape(str(text), quote=False)


def fmt(value: Any, digits: int = 4) -> str:
    """A number or short value as escaped text: floats to ``digits`` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if 10**digits <= abs(v) < 1e12:
            return f"{v:.0f}"  # 20484, not 2.048e+04
        return f"{v:.{digits}g}"
    if isinstance(value, int | np.integer):
        return str(int(value))
    return esc(value)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | bool | int | float | np.generic)


def value_html(value: Any, depth: int = 0) -> str:
    """Any JSON-like value as HTML: scalars formatted, mappings as key/value tables, lists of
    mappings as tables, short lists joined, long numeric lists summarised."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if _is_scalar(value):
        return fmt(value)
    if isinstance(value, Mapping):
        if not value:
            return "-"
        return kv_table(value, depth + 1)
    if isinstance(value, Sequence):
        items = list(value)
        if not items:
            return "-"
        if all(isinstance(v, Mapping) for v in items):
            return records_table(items, depth + 1)
        if all(_is_scalar(v) for v in items):
            if len(items) <= MAX_LIST:
                return ", ".join(fmt(v) for v in items)
            nums = [float(v) for v in items if isinstance(v, int | float | np.number)]
            if len(nums) == len(items):
                return (
                    f"{len(items)} values: first {fmt(nums[0])}, last {fmt(nums[-1])}, "
                    f"min {fmt(min(nums))}, max {fmt(max(nums))}"
                )
            return ", ".join(fmt(v) for v in items[:MAX_LIST]) + f", ... ({len(items)} in all)"
        return "<br>".join(value_html(v, depth + 1) for v in items)
    return fmt(value)


def label(key: Any) -> str:
    """A dict key as a readable row label (underscores to spaces)."""
    return esc(str(key).replace("_", " "))


def kv_table(mapping: Mapping[str, Any], depth: int = 0) -> str:
    """A two-column key/value table; nested values are rendered by :func:`value_html`."""
    rows = "".join(
        f"<tr><td>{label(k)}</td><td>{value_html(v, depth)}</td></tr>" for k, v in mapping.items()
    )
    return f'<table class="kv">{rows}</table>'


def records_table(records: Sequence[Mapping[str, Any]], depth: int = 0) -> str:
    """A table with one row per mapping and one column per key (union, first-seen order)."""
    keys: list[str] = []
    for r in records:
        keys.extend(k for k in r if k not in keys)
    return table(
        [str(k).replace("_", " ") for k in keys],
        [[value_html(r.get(k), depth) for k in keys] for r in records],
    )


def table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """A table from a header (escaped here) and rows of finished cell HTML."""
    attr = f' class="{cls}"' if cls else ""
    h = "".join(f"<th>{esc(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table{attr}><tr>{h}</tr>{body}</table>"


def page(title: str, body: Sequence[str], max_width_em: int = 80, head_extra: str = "") -> str:
    """A self-contained HTML document: title, the shared style, the body parts in order."""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{CSS % {'width': max_width_em}}</style>"
        f"{head_extra}</head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def html_table_page(
    title: str,
    head: Sequence[str],
    rows_html: Sequence[str],
    notes: Sequence[str] = (),
    max_width_em: int = 60,
) -> str:
    """A self-contained HTML page: heading, one table (``head`` escaped here; ``rows_html`` are
    finished ``<tr>`` elements) and the notes as a list (the benchmark, ablation and zero-shot
    tables)."""
    tab = (
        "<table>\n<tr>"
        + "".join(f"<th>{esc(h)}</th>" for h in head)
        + "</tr>\n"
        + "\n".join(rows_html)
        + "\n</table>"
    )
    notes_html = "<ul>\n" + "\n".join(f"<li>{esc(n)}</li>" for n in notes) + "\n</ul>"
    return page(title, [f"<h1>{esc(title)}</h1>", tab, notes_html], max_width_em)
