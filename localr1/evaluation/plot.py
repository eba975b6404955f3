"""The curve users want from ``--budgets``: accuracy against thinking tokens (and seconds), one line per run,
in the terminal (plotext) and as an SVG file (written here: a few lines of SVG need no plotting library)."""

from __future__ import annotations

from html import escape
from pathlib import Path

from localr1.evaluation.report import BudgetResult

# Imported inside the functions that use them: plotext (heavy to import, and not needed by every command).

Series = tuple[str, list[BudgetResult]]  # (label, results by budget)
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def _points(results: list[BudgetResult], x: str) -> list[tuple[float, float]]:
    pts = [(r.thinking_tokens if x == "tokens" else r.seconds, 100 * r.pass_at_1) for r in results]
    return sorted(pts)


def terminal_plot(series: list[Series], *, x: str = "tokens", width: int = 72, height: int = 18) -> str:
    """The curve as text for the terminal (plotext, no colours: it may go to a file or a pipe)."""
    import plotext as plt

    plt.clear_figure()
    plt.plotsize(width, height)
    plt.theme("clear")
    for label, results in series:
        pts = _points(results, x)
        plt.plot([p[0] for p in pts], [p[1] for p in pts], label=label, marker="dot")
    plt.ylim(0, 100)
    plt.xlabel("mean thinking tokens" if x == "tokens" else "mean seconds per problem")
    plt.ylabel("pass@1 %")
    text = plt.uncolorize(plt.build())
    plt.clear_figure()
    return text


def svg_plot(series: list[Series], path: Path, *, title: str = "Accuracy against thinking") -> Path:
    """Two panels, pass@1 against mean thinking tokens and against mean seconds, one line per run."""
    w, h, pad, gap = 420, 300, 50, 40
    width = 2 * w + gap + 2 * pad
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h + 2 * pad + 30}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    for panel, x in enumerate(("tokens", "seconds")):
        left, top = pad + panel * (w + gap), pad
        xs = [p[0] for _, r in series for p in _points(r, x)] or [0.0]
        xmax = max(xs) * 1.05 or 1.0

        def px(v: float, left=left, xmax=xmax) -> float:
            return left + w * v / xmax

        def py(v: float, top=top) -> float:
            return top + h - h * v / 100

        out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#888"/>')
        for tick in range(0, 101, 25):
            out.append(f'<line x1="{left}" x2="{left + w}" y1="{py(tick)}" y2="{py(tick)}" stroke="#eee"/>')
            out.append(f'<text x="{left - 6}" y="{py(tick) + 4}" text-anchor="end">{tick}%</text>')
        for i in range(5):
            v = xmax * i / 4
            out.append(f'<text x="{px(v)}" y="{top + h + 16}" text-anchor="middle">{v:,.0f}</text>')
        label = "mean thinking tokens" if x == "tokens" else "mean seconds per problem"
        out.append(f'<text x="{left + w / 2}" y="{top + h + 34}" text-anchor="middle">{label}</text>')
        for n, (name, results) in enumerate(series):
            color = COLORS[n % len(COLORS)]
            pts = _points(results, x)
            line = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in pts)
            out.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"/>')
            for a, b in pts:
                out.append(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3.5" fill="{color}"/>')
            if panel == 0:
                out.append(f'<text x="{left + 8}" y="{top + 16 + 16 * n}" fill="{color}">{escape(name)}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    return path
