"""The picture of a run: every pod's breaker state over time, as a hand-written SVG.

One row (``<g class="lane" data-pod="pod-0">``) per pod, coloured by the state
of the breaker it calls through (``payments``, then ``payments-quorum`` in phase
5), a thin strip under it for the pod's independent local breaker (the
comparison), diamonds for trial calls; the API's condition on a row above;
dashed lines where phases begin. No plotting library: rectangles and text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

from .records import ApiChange, PhaseStart, Record, StateChange, Trial
from .settings import BREAKER, INDEPENDENT, QUORUM_BREAKER

__all__ = ["Segment", "render_svg", "segments"]

STATE_COLOURS = {
    "closed": "#3a9d5d",
    "half_open": "#f0b429",
    "open": "#d64545",
    "forced_open": "#8b1e1e",
}
API_COLOURS = {"healthy": "#9fd8b0", "failing": "#d64545", "slow": "#f0b429", "sick": "#b07cc6"}

_WIDTH = 1000
_LEFT = 112  # labels
_RIGHT = 24
_TOP = 58
_ROW = 22
_STRIP = 5
_GAP = 12


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of time in one state."""

    start: float
    end: float
    state: str


def segments(
    changes: Sequence[StateChange], start: float, end: float, initial: str = "closed"
) -> list[Segment]:
    """The states of one breaker of one pod between ``start`` and ``end``, from its changes."""
    result: list[Segment] = []
    state, since = initial, start
    for change in sorted(changes, key=lambda c: c.t):
        if change.t < start:
            state = change.state
            continue
        if change.t >= end:
            break
        if change.state != state:
            if change.t > since:
                result.append(Segment(since, change.t, state))
            state, since = change.state, change.t
    if end > since:
        result.append(Segment(since, end, state))
    return result


def _api_segments(records: Sequence[Record], end: float) -> list[Segment]:
    changes = [r for r in records if isinstance(r, ApiChange)]
    result: list[Segment] = []
    for index, change in enumerate(changes):
        until = changes[index + 1].t if index + 1 < len(changes) else end
        mode = "sick" if change.sick else change.mode
        if until > change.t:
            result.append(Segment(change.t, until, mode))
    return result


def _ticks(end: float) -> list[float]:
    for step in (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0):
        if end / step <= 12:
            break
    count = int(end // step)
    return [i * step for i in range(count + 1)]


def render_svg(records: Sequence[Record], pods: Sequence[str], end: float, title: str) -> str:
    """The swimlane picture of a run, as SVG text.

    Args:
        records: the timeline's records.
        pods: one row each, in this order.
        end: seconds the picture spans (from 0).
        title: the heading.
    """
    end = max(end, 1e-3)
    span = _WIDTH - _LEFT - _RIGHT

    def x(t: float) -> float:
        return _LEFT + max(0.0, min(t, end)) / end * span

    phases = [r for r in records if isinstance(r, PhaseStart)]
    quorum_start = next((p.t for p in phases if p.number == 5), end)
    lane_height = _ROW + 2 + _STRIP
    height = _TOP + (_ROW + _GAP) + len(pods) * (lane_height + _GAP) + 100
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{_WIDTH}" height="{height}" fill="#ffffff"/>',
        f'<text x="{_LEFT}" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]

    def rect(segment: Segment, y: float, h: float, fill: str, what: str) -> None:
        x0, x1 = x(segment.start), x(segment.end)
        out.append(
            f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0, 0.5):.1f}" height="{h}" '
            f'fill="{fill}"><title>{escape(what)}: {segment.state.replace("_", "-")} '
            f"{segment.start:.3f}–{segment.end:.3f} s</title></rect>"
        )

    y = _TOP
    out.append('<g class="api">')
    out.append(f'<text x="{_LEFT - 8}" y="{y + 15}" text-anchor="end">payments API</text>')
    for segment in _api_segments(records, end):
        rect(segment, y, _ROW, API_COLOURS.get(segment.state, "#999999"), "payments API")
    out.append("</g>")
    y += _ROW + _GAP
    for pod in pods:
        changes = [r for r in records if isinstance(r, StateChange) and r.pod == pod]
        out.append(f'<g class="lane" data-pod="{escape(pod)}">')
        out.append(f'<text x="{_LEFT - 8}" y="{y + 15}" text-anchor="end">{escape(pod)}</text>')
        shared = [c for c in changes if c.breaker == BREAKER]
        quorum = [c for c in changes if c.breaker == QUORUM_BREAKER]
        local = [c for c in changes if c.breaker == INDEPENDENT]
        for segment in segments(shared, 0.0, quorum_start):
            rect(segment, y, _ROW, STATE_COLOURS.get(segment.state, "#999999"), f"{pod} {BREAKER}")
        for segment in segments(quorum, quorum_start, end):
            colour = STATE_COLOURS.get(segment.state, "#999999")
            rect(segment, y, _ROW, colour, f"{pod} {QUORUM_BREAKER}")
        for segment in segments(local, 0.0, quorum_start):
            colour = STATE_COLOURS.get(segment.state, "#999999")
            rect(segment, y + _ROW + 2, _STRIP, colour, f"{pod} independent breaker")
        for trial in (r for r in records if isinstance(r, Trial) and r.pod == pod):
            if trial.breaker == INDEPENDENT:
                continue
            cx, cy = x(trial.t), y + _ROW / 2
            out.append(
                f'<path d="M{cx:.1f},{cy - 6:.1f} l5,6 l-5,6 l-5,-6 z" fill="#1d3557" '
                f'stroke="#ffffff" stroke-width="1"><title>{escape(pod)} trial at '
                f"{trial.t:.3f} s</title></path>"
            )
        out.append("</g>")
        y += lane_height + _GAP
    bottom = y - _GAP
    for phase in phases:
        px = x(phase.t)
        out.append(
            f'<line class="phase" x1="{px:.1f}" y1="{_TOP - 14}" x2="{px:.1f}" y2="{bottom}" '
            f'stroke="#333333" stroke-dasharray="4,3"><title>{phase.number}. '
            f"{escape(phase.title)}</title></line>"
        )
        out.append(
            f'<text x="{px + 3:.1f}" y="{_TOP - 4}" font-weight="bold">{phase.number}</text>'
        )
    out.append(f'<g class="axis" transform="translate(0,{bottom + 4})">')
    for tick in _ticks(end):
        tx = x(tick)
        out.append(f'<line x1="{tx:.1f}" y1="0" x2="{tx:.1f}" y2="5" stroke="#333333"/>')
        out.append(f'<text x="{tx:.1f}" y="18" text-anchor="middle">{tick:g} s</text>')
    out.append("</g>")
    legend_y = bottom + 44
    lx = float(_LEFT)
    for label, colour in (
        ("closed", STATE_COLOURS["closed"]),
        ("half-open", STATE_COLOURS["half_open"]),
        ("open", STATE_COLOURS["open"]),
    ):
        out.append(
            f'<rect x="{lx:.1f}" y="{legend_y - 10}" width="12" height="12" fill="{colour}"/>'
        )
        out.append(f'<text x="{lx + 16:.1f}" y="{legend_y}">{label}</text>')
        lx += 30 + 7 * len(label)
    out.append(
        f'<path d="M{lx + 6:.1f},{legend_y - 10} l5,6 l-5,6 l-5,-6 z" fill="#1d3557"/>'
        f'<text x="{lx + 16:.1f}" y="{legend_y}">trial call</text>'
    )
    lx += 110
    out.append(f'<text x="{lx:.1f}" y="{legend_y}">API:</text>')
    lx += 34
    for label, colour in (
        ("healthy", API_COLOURS["healthy"]),
        ("down", API_COLOURS["failing"]),
        ("hanging", API_COLOURS["slow"]),
        ("refuses one pod", API_COLOURS["sick"]),
    ):
        out.append(
            f'<rect x="{lx:.1f}" y="{legend_y - 10}" width="12" height="12" fill="{colour}"/>'
        )
        out.append(f'<text x="{lx + 16:.1f}" y="{legend_y}">{label}</text>')
        lx += 30 + 7 * len(label)
    names = " · ".join(f"{p.number} {p.title.split(':')[0]}" for p in phases)
    out.append(f'<text x="{_LEFT}" y="{legend_y + 22}">Phases: {escape(names)}.</text>')
    out.append(
        f'<text x="{_LEFT}" y="{legend_y + 40}">The thin strip under each pod: its independent '
        "local breaker, fed a copy of the same traffic (phases 1-4), for comparison.</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"
