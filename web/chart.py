"""Server-side SVG charts: the console ships no JavaScript, so a chart is markup the server draws.

:func:`activity_svg` draws a site's signals per time bucket around an episode: every signal of the rule's
types as a pale bar, the matching ones as a dark bar over it, the episode shaded, the rule's window as a
bracket, and for a threshold rule the matching count in a trailing window against the threshold line. Each
bucket is one ``<g>`` with ``data-bucket``/``data-count``/``data-matching``/``data-in-episode`` (the browser
tests and bench read them). Text goes through :func:`markupsafe.escape`; numbers are formatted here.
"""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup, escape

from schemas.durations import format_duration
from schemas.timestamps import format_ts

NICE_BUCKETS_MS = tuple(seconds * 1000 for seconds in (
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800,
))
MAX_BUCKETS = 120

WIDTH, HEIGHT = 1000, 230
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 22, 36


def bucket_size(span_ms: int) -> int:
    """The smallest round bucket that covers ``span_ms`` in at most :data:`MAX_BUCKETS` buckets (60–120 for most spans)."""
    for size in NICE_BUCKETS_MS:
        if span_ms <= size * MAX_BUCKETS:
            return size
    return -(-span_ms // MAX_BUCKETS)


@dataclass
class ActivityChart:
    """What the chart shows; times are epoch milliseconds, ``counts[i]`` is the bucket at ``start + i × bucket``."""

    start: int
    bucket: int
    counts: list[int]
    matching: list[int] | None
    """Matching signals per bucket, or None when they could not be counted (``note`` says why)."""
    episode: tuple[int, int]
    window: tuple[int, int] | None = None
    """The rule's window (or silence) that ended at the first notification."""
    window_label: str = ""
    threshold: int | None = None
    rolling: list[int] | None = None
    """Matching signals in the trailing window at the end of each bucket (threshold rules)."""
    rolling_label: str = ""
    note: str = ""

    @property
    def end(self) -> int:
        """The end of the last bucket."""
        return self.start + self.bucket * len(self.counts)


def _x(chart: ActivityChart, ms: int) -> float:
    span = max(chart.end - chart.start, 1)
    return LEFT + (WIDTH - LEFT - RIGHT) * (min(max(ms, chart.start), chart.end) - chart.start) / span


def _clock(ms: int, bucket: int) -> str:
    text = format_ts(ms)  # 2026-11-28T10:05:00.000Z
    return text[11:19] if bucket < 60_000 else text[11:16]


def _num(value: float) -> str:
    return f"{value:.1f}"


def activity_svg(chart: ActivityChart) -> Markup:
    """The chart as an inline ``<svg>`` element (safe markup: every text escaped)."""
    plot_h = HEIGHT - TOP - BOTTOM
    top_value = max([1, *chart.counts, *(chart.rolling or []), chart.threshold or 0])

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value / top_value)

    parts: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="signals per {escape(format_duration(chart.bucket))} around the episode">',
    ]
    first, last = chart.episode
    slot = (WIDTH - LEFT - RIGHT) / max(len(chart.counts), 1)
    for index, count in enumerate(chart.counts):
        at = chart.start + index * chart.bucket
        matching = None if chart.matching is None else chart.matching[index]
        inside = at + chart.bucket > first and at <= last
        x = LEFT + index * slot
        attributes = (f'data-bucket="{escape(format_ts(at))}" data-count="{count}"'
                      + ("" if matching is None else f' data-matching="{matching}"')
                      + (' data-in-episode="true"' if inside else ""))
        label = f"{format_ts(at)}: {count} signals" + ("" if matching is None else f", {matching} matching")
        parts.append(f'<g class="bucket" {attributes}><title>{escape(label)}</title>')
        parts.append(f'<rect class="all" x="{_num(x + 0.5)}" y="{_num(y(count))}" width="{_num(max(slot - 1, 0.5))}" '
                     f'height="{_num(plot_h * count / top_value)}"/>')
        if matching:
            parts.append(f'<rect class="matching" x="{_num(x + 0.5)}" y="{_num(y(matching))}" '
                         f'width="{_num(max(slot - 1, 0.5))}" height="{_num(plot_h * matching / top_value)}"/>')
        parts.append("</g>")
    # The episode over the bars (translucent), and as a band under the time axis.
    x1, x2 = _x(chart, first), _x(chart, last)
    parts.append(
        f'<rect class="episode" x="{_num(x1)}" y="{TOP}" width="{_num(max(x2 - x1, 1.5))}" height="{plot_h + 6}">'
        f'<title>episode {escape(format_ts(first))} – {escape(format_ts(last))}</title></rect>'
    )
    if chart.rolling is not None:
        points = " ".join(f"{_num(LEFT + (i + 1) * slot)},{_num(y(v))}" for i, v in enumerate(chart.rolling))
        parts.append(f'<polyline class="rolling" points="{points}"><title>{escape(chart.rolling_label)}</title></polyline>')
    if chart.threshold is not None:
        level = _num(y(chart.threshold))
        parts.append(f'<line class="threshold" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{level}" y2="{level}"/>')
        parts.append(f'<text class="threshold-label" x="{WIDTH - RIGHT - 4}" y="{_num(y(chart.threshold) - 4)}" '
                     f'text-anchor="end">threshold {chart.threshold}</text>')
    if chart.window is not None:
        x1, x2 = _x(chart, chart.window[0]), _x(chart, chart.window[1])
        parts.append(f'<g class="window"><path d="M{_num(x1)},{TOP - 4} v-6 H{_num(x2)} v6"/>'
                     f'<text x="{_num((x1 + x2) / 2)}" y="{TOP - 12}" text-anchor="middle">{escape(chart.window_label)}</text></g>')
    # Axes: the count scale on the left, clock labels below (UTC), about eight of them.
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>')
    parts.append(f'<text class="tick-label" x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{top_value}</text>')
    parts.append(f'<text class="tick-label" x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">0</text>')
    every = max(1, len(chart.counts) // 8)
    for index in range(0, len(chart.counts) + 1, every):
        at = chart.start + index * chart.bucket
        at_x = _num(LEFT + index * slot)
        parts.append(f'<line class="grid" x1="{at_x}" x2="{at_x}" y1="{TOP + plot_h}" y2="{TOP + plot_h + 4}"/>')
        parts.append(f'<text class="tick-label" x="{at_x}" y="{TOP + plot_h + 16}" text-anchor="middle">{_clock(at, chart.bucket)}</text>')
    parts.append(f'<text class="tick-label" x="{WIDTH - RIGHT}" y="{HEIGHT - 4}" text-anchor="end">UTC · '
                 f'{escape(format_duration(chart.bucket))} buckets</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built here from escaped text and formatted numbers only


SERIES_CLASSES = 10
"""Stacked series are coloured by position (``series-0`` … ``series-9``, console.css); more share the last colour."""


def series_class(index: int) -> str:
    """The CSS class of the ``index``-th series of a stacked chart (its bars and its key in the page)."""
    return f"series-{min(index, SERIES_CLASSES - 1)}"


def stacked_svg(start: int, bucket: int, series: dict[str, list[int]], what: str) -> Markup:
    """Counts of several series per bucket as stacked bars (the site page's signals per type).

    ``series`` maps a name to one count per bucket (all the same length), in the order the page lists them;
    each bucket is a ``<g data-bucket data-count>`` with one ``rect[data-series]`` per non-zero series.
    """
    buckets = max((len(counts) for counts in series.values()), default=0)
    totals = [sum(counts[index] for counts in series.values()) for index in range(buckets)]
    plot_h = HEIGHT - TOP - BOTTOM
    top_value = max([1, *totals])
    slot = (WIDTH - LEFT - RIGHT) / max(buckets, 1)
    parts: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(what)} per {escape(format_duration(bucket))}">',
    ]
    for index in range(buckets):
        at = start + index * bucket
        x = _num(LEFT + index * slot + 0.5)
        width = _num(max(slot - 1, 0.5))
        parts.append(f'<g class="bucket" data-bucket="{escape(format_ts(at))}" data-count="{totals[index]}">'
                     f'<title>{escape(format_ts(at))}: {totals[index]} {escape(what)}</title>')
        below = 0
        for position, (name, counts) in enumerate(series.items()):
            count = counts[index]
            if count:
                height = plot_h * count / top_value
                y = TOP + plot_h * (1 - (below + count) / top_value)
                parts.append(f'<rect class="{series_class(position)}" data-series="{escape(name)}" data-count="{count}" '
                             f'x="{x}" y="{_num(y)}" width="{width}" height="{_num(height)}"/>')
                below += count
        parts.append("</g>")
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>')
    parts.append(f'<text class="tick-label" x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{top_value}</text>')
    parts.append(f'<text class="tick-label" x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">0</text>')
    every = max(1, buckets // 8)
    for index in range(0, buckets + 1, every):
        at_x = _num(LEFT + index * slot)
        parts.append(f'<line class="grid" x1="{at_x}" x2="{at_x}" y1="{TOP + plot_h}" y2="{TOP + plot_h + 4}"/>')
        anchor = "end" if index == buckets else "middle"  # the last label ends at the plot's edge, not past it
        parts.append(f'<text class="tick-label" x="{at_x}" y="{TOP + plot_h + 16}" text-anchor="{anchor}">'
                     f'{_clock(start + index * bucket, bucket)}</text>')
    parts.append(f'<text class="tick-label" x="{WIDTH - RIGHT}" y="{HEIGHT - 4}" text-anchor="end">UTC · '
                 f'{escape(format_duration(bucket))} buckets</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built here from escaped text and formatted numbers only
