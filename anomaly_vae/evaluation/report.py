"""One self-contained HTML file: a metrics table and titled sections of figures and tables.

Figures are embedded as base64 PNG and the styles inline, so the file opens offline, can be
mailed or attached to a ticket, and shows exactly what was logged to MLflow. The file is
written to a temporary name beside the target and renamed, so a failed run leaves no half
report behind.
"""

from __future__ import annotations

import base64
import html
import io
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from anomaly_vae.data.files import check_output_folder
from anomaly_vae.errors import InputError

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
.about { color: #555; } .caption { color: #444; max-width: 60rem; }
table { border-collapse: collapse; margin: 0.6rem 0; }
td, th { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f3f3f3; } td.name { text-align: left; }
img { max-width: 100%; }
"""


@dataclass
class Section:
    """A titled part of the report: a caption, then a figure and/or a table.

    `name` is the section's file stem, `figures/<name>.png`, where it is logged to MLflow.
    """

    name: str
    title: str
    caption: str = ""
    figure: Figure | None = None
    table: pd.DataFrame | None = None


def figure_png(figure: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def render_html(
    title: str, about: dict[str, str], metrics: dict[str, float], sections: list[Section]
) -> str:
    """The report's HTML; each metric keeps its exact value in a `data-value` attribute."""
    esc = html.escape
    rows = "\n".join(
        f'<tr><td class="name">{esc(name)}</td>'
        f'<td data-metric="{esc(name)}" data-value="{value!r}">{value:.4f}</td></tr>'
        for name, value in metrics.items()
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        '<p class="about">'
        + "<br>".join(f"<b>{esc(k)}</b>: {esc(str(v))}" for k, v in about.items())
        + "</p>",
        "<h2>Metrics</h2>",
        f'<table class="metrics"><tr><th>metric</th><th>value</th></tr>\n{rows}\n</table>',
    ]
    for section in sections:
        parts.append(f'<h2 id="{esc(section.name)}">{esc(section.title)}</h2>')
        if section.caption:
            parts.append(f'<p class="caption">{esc(section.caption)}</p>')
        if section.figure is not None:
            encoded = base64.b64encode(figure_png(section.figure)).decode("ascii")
            parts.append(f'<img alt="{esc(section.title)}" src="data:image/png;base64,{encoded}">')
        if section.table is not None:
            parts.append(section.table.to_html(index=False, border=0))
    parts.append("</body></html>")
    return "\n".join(parts)


def check_report_path(path: str | Path) -> Path:
    """Fail before any work is done if the report could not be written there."""
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"{path}: a report is written as .html")
    check_output_folder(path)
    return path


def write_html(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    path = check_report_path(path)
    # open(), not mkstemp: the report gets the usual permissions, not owner-only ones.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
