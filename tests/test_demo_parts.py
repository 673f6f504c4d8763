"""The demo's parts on their own: wording, timeline order, summary, picture, API, settings."""

from __future__ import annotations

import asyncio
import io
import xml.etree.ElementTree as ET

import pytest

from distributed_opossum._demo.downstream import Hit, PaymentsApi
from distributed_opossum._demo.picture import Segment, render_svg, segments
from distributed_opossum._demo.pod import ApiError, call_api
from distributed_opossum._demo.records import (
    ApiChange,
    CallCounts,
    PhaseStart,
    Record,
    ReportError,
    StateChange,
    Trial,
    TrialEnd,
    parse_report,
)
from distributed_opossum._demo.redis_target import redact
from distributed_opossum._demo.settings import BREAKER, INDEPENDENT, QUORUM_BREAKER, Settings
from distributed_opossum._demo.summary import render, summarise
from distributed_opossum._demo.timeline import Timeline
from distributed_opossum._demo.words import state_words

PODS = ("pod-0", "pod-1", "pod-2")


def change(t: float, pod: str, state: str, cause: str, **fields: object) -> StateChange:
    """A state change of the shared breaker."""
    return StateChange(t=t, pod=pod, breaker=BREAKER, state=state, cause=cause, **fields)  # type: ignore[arg-type]


def outage_records() -> list[Record]:
    """One outage: pod-0 trips, a trial fails (timeout), a trial succeeds; then phase 5."""
    records: list[Record] = [
        PhaseStart(0.0, 1, "healthy: ..."),
        ApiChange(0.0, "healthy"),
        PhaseStart(1.0, 2, "outage: ..."),
        ApiChange(1.0, "failing"),
        change(1.5, "pod-0", "open", "local", attempts=1, retry_after=1.0, failures=6, successes=4),
        change(1.502, "pod-1", "open", "remote", attempts=1, retry_after=1.0),
        change(1.504, "pod-2", "open", "remote", attempts=1, retry_after=1.0),
        StateChange(1.6, "pod-2", INDEPENDENT, "open", "local"),
    ]
    records += [change(2.5 + i / 1000, pod, "half_open", "timer") for i, pod in enumerate(PODS)]
    records += [
        Trial(2.51, "pod-1", BREAKER),
        TrialEnd(3.01, "pod-1", BREAKER, ok=False, outcome="timed out"),
        change(3.011, "pod-1", "open", "trial", attempts=2, retry_after=2.0),
        change(3.013, "pod-0", "open", "remote", attempts=2, retry_after=2.0),
        change(3.014, "pod-2", "open", "remote", attempts=2, retry_after=2.0),
        ApiChange(4.0, "healthy"),
    ]
    records += [change(5.01 + i / 1000, pod, "half_open", "timer") for i, pod in enumerate(PODS)]
    records += [
        Trial(5.02, "pod-0", BREAKER),
        TrialEnd(5.021, "pod-0", BREAKER, ok=True, outcome="succeeded"),
        change(5.022, "pod-0", "closed", "trial"),
        change(5.024, "pod-1", "closed", "remote"),
        change(5.026, "pod-2", "closed", "remote"),
        PhaseStart(6.0, 5, "one sick pod: ..."),
        ApiChange(6.0, "healthy", sick=("pod-1",)),
        StateChange(6.7, "pod-1", QUORUM_BREAKER, "open", "local", attempts=1, retry_after=1.0),
    ]
    return records


def outage_hits() -> list[Hit]:
    """Calls the API saw: some sick ones of both kinds, some healthy ones in phase 5."""
    hits = [Hit(1.1, "pod-0", BREAKER, ok=False), Hit(1.2, "pod-1", BREAKER, ok=False)]
    hits += [Hit(1.1 + i / 10, "pod-2", INDEPENDENT, ok=False) for i in range(20)]
    hits += [Hit(0.5, "pod-0", BREAKER, ok=True), Hit(4.5, "pod-0", INDEPENDENT, ok=True)]
    hits += [Hit(6.5, "pod-0", QUORUM_BREAKER, ok=True), Hit(6.6, "pod-2", QUORUM_BREAKER, ok=True)]
    return hits


def test_state_changes_are_said_in_words() -> None:
    """Each cause reads as a sentence, with the period and who it followed."""
    trip = change(
        1.5, "pod-0", "open", "local", attempts=1, retry_after=1.0, failures=6, successes=4
    )
    assert state_words(trip) == (
        "tripped here (its own failures: 6 of 10 calls) · open 1.00 s, attempt 1"
    )
    assert "opens only this pod: 1 vote, quorum=2" in state_words(trip, quorum=2)
    trial = TrialEnd(3.0, "pod-1", BREAKER, ok=False, outcome="HTTP 503")
    again = change(3.001, "pod-1", "open", "trial", attempts=2, retry_after=2.0)
    assert state_words(again, trial=trial).startswith("its trial failed (HTTP 503): open again")
    closed = change(5.0, "pod-0", "closed", "trial")
    assert state_words(closed) == "closed after a successful trial"
    for cause in ("manual", "health_check", "restored", "cluster", "remote", "something new"):
        for state in ("open", "half_open", "closed", "forced_open"):
            words = state_words(change(1.0, "pod-0", state, cause))
            assert words
            assert "Cause." not in words
            assert "(<" not in words


def test_timeline_prints_in_clock_order_and_names_the_origin() -> None:
    """A follower read before the pod it followed is printed after it, naming it."""
    out = io.StringIO()
    timeline = Timeline(out, colour=False, quorums={BREAKER: None})
    timeline.add(change(1.503, "pod-1", "open", "remote", attempts=1, retry_after=1.0))
    timeline.add(change(1.5, "pod-0", "open", "local", attempts=1, retry_after=1.0, failures=6))
    timeline.add(StateChange(1.6, "pod-2", INDEPENDENT, "open", "local"))  # recorded, not printed
    timeline.flush(everything=True)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].split()[:3] == ["+1.500s", "pod-0", "OPEN"]
    assert "tripped here" in lines[0]
    assert "opened by another pod's trip (pod-0, +3.0 ms)" in lines[1]
    assert timeline.state("pod-1", BREAKER) == "open"
    assert timeline.state("pod-2", BREAKER) == "closed"
    assert timeline.attempts(BREAKER) == 1


def test_timeline_takes_a_cluster_opening_after_its_own_failed_trial_as_the_trial() -> None:
    """When a trial's local permit expired first, the pod follows the cluster: still its trial."""
    out = io.StringIO()
    timeline = Timeline(out, colour=False, quorums={BREAKER: None})
    timeline.add(change(2.0, "pod-0", "half_open", "timer"))
    timeline.add(change(2.0, "pod-1", "half_open", "timer"))
    timeline.add(TrialEnd(2.3, "pod-0", BREAKER, ok=False, outcome="timed out"))
    timeline.add(change(2.302, "pod-1", "open", "remote", attempts=2, retry_after=2.0))
    timeline.add(change(2.305, "pod-0", "open", "cluster", attempts=2, retry_after=2.0))
    timeline.flush(everything=True)
    text = out.getvalue()
    assert "pod-0's trial timed out: open again (+2.0 ms)" in text
    assert "its trial timed out: open again" in text
    assert "cluster's decision" not in text


def test_summary_measures_the_comparison_periods_propagation_and_quorum() -> None:
    """The numbers come from the records and the API's hits, nothing else."""
    counts = {("pod-0", BREAKER): CallCounts("pod-0", BREAKER, 9, 5, 3, 2, 4)}
    summary = summarise(outage_records(), outage_hits(), counts, PODS, "pod-1")
    assert summary.outage == (1.0, 4.0)
    assert summary.total(BREAKER) == 2
    assert summary.total(INDEPENDENT) == 20
    assert summary.independent_trips == ("pod-2",)
    assert summary.trials_during_outage == {BREAKER: 1, INDEPENDENT: 0}
    assert [round(p.length or 0, 3) for p in summary.periods] == [1.0, 1.999]
    assert [len(p.trials) for p in summary.periods] == [1, 1]
    trip, failed, closed = summary.propagations
    assert (trip.pod, trip.what) == ("pod-0", "trip")
    assert trip.delays == pytest.approx({"pod-1": 0.002, "pod-2": 0.004})
    assert (failed.pod, failed.what) == ("pod-1", "failed trial")
    assert failed.delays == pytest.approx({"pod-0": 0.003, "pod-2": 0.004})
    assert (closed.pod, closed.what) == ("pod-0", "successful trial")
    assert summary.quorum_opened == ("pod-1",)
    assert summary.sick_pod_alone
    assert summary.quorum_served == {"pod-0": 1, "pod-2": 1}
    assert (summary.api_received, summary.pods_reached) == (len(outage_hits()), 5)
    text = "\n".join(render(summary))
    assert "(10.0× as many)" in text
    assert "pod-0's trip at +1.500 s → pod-1 +2.0 ms · pod-2 +4.0 ms" in text
    assert "only pod-1 opened" in text
    assert "    independent       0      0     20" in text  # the pod-by-pod table
    assert "period 1   1.00 s  1 trial   (pod-1: timed out)" in text
    assert "period 2   2.00 s  1 trial   (pod-0: succeeded)" in text


def test_segments_follow_the_changes_within_their_span() -> None:
    """State changes become stretches of time; changes before the span set the start state."""
    changes = [
        change(1.0, "pod-0", "open", "local"),
        change(2.0, "pod-0", "half_open", "timer"),
        change(2.5, "pod-0", "closed", "trial"),
    ]
    assert segments(changes, 0.0, 3.0) == [
        Segment(0.0, 1.0, "closed"),
        Segment(1.0, 2.0, "open"),
        Segment(2.0, 2.5, "half_open"),
        Segment(2.5, 3.0, "closed"),
    ]
    assert segments(changes, 1.5, 2.2) == [
        Segment(1.5, 2.0, "open"),
        Segment(2.0, 2.2, "half_open"),
    ]


def test_picture_is_svg_with_one_lane_per_pod() -> None:
    """Well-formed SVG: a lane per pod with its rectangles, a marker per phase, trials drawn."""
    svg = render_svg(outage_records(), PODS, 7.0, "demo <test> & more")
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    lanes = root.findall(f".//{ns}g[@class='lane']")
    assert [lane.get("data-pod") for lane in lanes] == list(PODS)
    assert all(len(lane.findall(f"{ns}rect")) >= 4 for lane in lanes)
    assert len(root.findall(f".//{ns}line[@class='phase']")) == 3
    assert len(root.findall(f".//{ns}path")) >= 2  # the two trials, and the legend's
    assert "demo &lt;test&gt; &amp; more" in svg


def test_reports_are_parsed_or_refused() -> None:
    """A pod's JSON line becomes a record on the demo's clock; garbage is an error."""
    record = parse_report(b'{"e": "trial", "t": 12.5, "b": "payments"}\n', "pod-3", t0=10.0)
    assert record == Trial(2.5, "pod-3", "payments")
    assert parse_report(b"\n", "pod-3", t0=0.0) is None
    with pytest.raises(ReportError, match="pod-3 printed an unreadable report"):
        parse_report(b"Traceback (most recent call last):", "pod-3", t0=0.0)
    with pytest.raises(ReportError, match="unknown kind 'nope'"):
        parse_report(b'{"e": "nope", "t": 1}', "pod-3", t0=0.0)


async def test_the_payments_api_is_healthy_failing_slow_or_sick_for_one_pod() -> None:
    """The demo's HTTP downstream, called as the pods call it; it counts every call."""
    loop = asyncio.get_running_loop()
    api = PaymentsApi(loop.time, slow_delay=5.0)
    await api.start()
    sent: list[int] = []
    try:

        async def call(pod: str) -> str:
            return await call_api("127.0.0.1", api.port, pod, BREAKER, lambda: sent.append(1))

        assert await call("pod-0") == "charged"
        api.set("healthy", sick=("pod-1",))
        assert await call("pod-0") == "charged"
        with pytest.raises(ApiError, match="HTTP 503"):
            await call("pod-1")
        api.set("failing")
        with pytest.raises(ApiError, match="HTTP 503"):
            await call("pod-0")
        api.set("slow")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await call("pod-2")
        with pytest.raises(ValueError, match="mode must be one of"):
            api.set("on fire")
    finally:
        await api.close()  # also ends the slow call still waiting on the server
    assert [(hit.pod, hit.ok) for hit in api.hits] == [
        ("pod-0", True),
        ("pod-0", True),
        ("pod-1", False),
        ("pod-0", False),
        ("pod-2", False),
    ]
    assert len(sent) == 5


@pytest.mark.parametrize("duration", [4.0, 8.0, 12.0, 30.0, 60.0, 600.0])
def test_settings_keep_each_timeout_inside_its_open_period(duration: float) -> None:
    """The timeout stays below the open period, and phases scale with --duration."""
    settings = Settings(pods=5, duration=duration, url=None, picture=None, token="t")
    assert settings.timeout < settings.reset_timeout
    assert settings.slow_delay > settings.timeout
    assert settings.max_reset_timeout == 4 * settings.reset_timeout
    assert len(settings.rates) == 5
    assert settings.rates[0] > 10 > settings.rates[-1]  # the busiest trips alone, the quietest not
    assert settings.sick_pod in settings.pod_names


def test_passwords_stay_out_of_the_output() -> None:
    """A --url with a password is shown without it."""
    assert redact("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("redis://host:6379") == "redis://host:6379"
