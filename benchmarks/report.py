"""Print the benchmark table and draw it as a dependency-free SVG bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _cell(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Render ``rows`` as a Markdown table; columns are (key, title, format).
    A value of ``None`` (not measured for that row) is an empty cell."""
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "| " + " | ".join("---" for _ in columns) + " |"
    body = [
        "| " + " | ".join(_cell(row[key], fmt) for key, _, fmt in columns) + " |"
        for row in rows
    ]
    return "\n".join([head, rule, *body])


def svg_bars(rows: list[dict[str, Any]], key: str, title: str, path: Path) -> None:
    """One horizontal bar per row, labelled, scaled to the largest value."""
    width, bar_h, gap, left = 720, 22, 8, 260
    top = 40
    height = top + len(rows) * (bar_h + gap) + 20
    peak = max((float(r[key]) for r in rows), default=1.0) or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        ' font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{title}</text>',
    ]
    for i, row in enumerate(rows):
        y = top + i * (bar_h + gap)
        length = (width - left - 80) * float(row[key]) / peak
        label = row.get("label", row.get("variant", ""))
        parts += [
            f'<text x="10" y="{y + 15}">{label}</text>',
            f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar_h}"'
            f' fill="{"#888" if "shell" in str(label) else "#b87333"}"/>',
            f'<text x="{left + length + 6:.1f}" y="{y + 15}">'
            f"{float(row[key]):.2f}</text>",
        ]
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")
