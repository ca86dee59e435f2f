"""Bar charts as inline SVG: no JavaScript, no CDN, readable from a file:// page."""

from __future__ import annotations

import html

from prism4m.report.stats import Chart


def bar_chart(chart: Chart, width: int = 320, height: int = 120) -> str:
    n = max(len(chart.counts), 1)
    top = max(chart.counts, default=0) or 1
    categorical = any(not _is_number(x) for x in chart.labels)
    pad_b = 54 if categorical else 16
    bw = (width - 8) / n
    bars = []
    for i, (lab, c) in enumerate(zip(chart.labels, chart.counts)):
        h = (height - pad_b - 12) * c / top
        x = 4 + i * bw
        y = height - pad_b - h
        tip = html.escape(f"{lab}: {c}")
        bars.append(f"<rect x='{x:.1f}' y='{y:.1f}' width='{max(bw - 1, 1):.1f}' height='{h:.1f}' fill='#3b7dd8'>"
                    f"<title>{tip}</title></rect>")
        if categorical:
            bars.append(f"<text x='{x + bw / 2:.1f}' y='{height - pad_b + 4}' font-size='9' "
                        f"transform='rotate(60 {x + bw / 2:.1f} {height - pad_b + 4})'>{html.escape(lab[:14])}</text>")
    if not categorical and chart.labels:
        bars.append(f"<text x='4' y='{height - 3}' font-size='9'>{html.escape(chart.labels[0])}</text>")
        bars.append(f"<text x='{width - 4}' y='{height - 3}' font-size='9' text-anchor='end'>"
                    f"{html.escape(chart.labels[-1])}</text>")
    bars.append(f"<text x='{width - 4}' y='10' font-size='9' text-anchor='end'>max {top}</text>")
    return (f"<figure class='chart'><svg width='{width}' height='{height}' role='img' "
            f"aria-label='{html.escape(chart.title)}'>{''.join(bars)}</svg>"
            f"<figcaption>{html.escape(chart.title)}</figcaption></figure>")


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
