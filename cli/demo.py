"""``logystera demo``: a simulated day of four sites through the real detection flow.

Writes the scenario of :mod:`simulate.scenario` to ``DATA_DIR/signals.jsonl``,
replays it with the default rule pack (:data:`RULES_DIR`) through
:func:`flows.replay.replay` — the same Bytewax dataflow as ``logystera
replay`` — and shows each notification the moment the flow emits it, then a
table of them all and the totals; the notification records go to
``DATA_DIR/alerts.jsonl``, sorted as cli.md prescribes.

Progress: the flow reads the signals through a named pipe that a feeder
thread fills from the file, counting lines as it goes (its count runs at most
a pipe buffer and a read chunk ahead of the flow). On a terminal the
progress is one line redrawn in place; otherwise it is a plain line every
10 %. Where named pipes do not exist the flow reads the file directly and
only the final totals are shown.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from flows.replay import ReplayResult, replay
from flows.sources import DEFAULT_CHUNK_LINES
from operators.notification import DEFAULT_LINK_BASE, Emitted
from schemas.rules import Rule
from simulate.scenario import DAY_START, SITES, write_scenario
from sinks.clickhouse import Store
from web.command import serve_console

RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
"""The default rule pack: ``rules/`` beside ``cli/``, in a checkout and in an installed wheel alike (pyproject package-data)."""

_SEVERITY_ORDER = ("critical", "high", "medium", "low", "info")
_PROGRESS_STEPS = 10
_WRITE_LINES = 500
_LEAD = 2 * DEFAULT_CHUNK_LINES


class Console:
    """Line output shared by the flow's callback and the feeder thread.

    On a TTY a status line is kept at the bottom and redrawn after every
    printed line; elsewhere status updates are printed as ordinary lines.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._status = ""

    def line(self, text: str) -> None:
        """Print one line (above the status line on a TTY)."""
        with self._lock:
            self._clear()
            self.stream.write(text + "\n")
            if self._status:
                self.stream.write(self._status)
            self.stream.flush()

    def status(self, text: str) -> None:
        """Show progress: redrawn in place on a TTY, a plain line otherwise."""
        with self._lock:
            if not self.tty:
                self.stream.write(text + "\n")
            else:
                self._clear()
                self._status = text
                self.stream.write(text)
            self.stream.flush()

    def end_status(self) -> None:
        """Remove the status line (TTY only)."""
        with self._lock:
            self._clear()
            self._status = ""
            self.stream.flush()

    def _clear(self) -> None:
        if self.tty and self._status:
            self.stream.write("\r" + " " * len(self._status) + "\r")


def _clock(ts: str) -> str:
    """``HH:MM:SS`` of a scenario timestamp (the scenario is one day, named in the header)."""
    return ts[11:19]


def alert_line(record: dict[str, Any]) -> str:
    """One readable line for a notification: time, severity, site, rule title, summary."""
    severity = record["severity"].upper() if record["status"] == "firing" else "resolved"
    title = record["rule"]["title"]
    return f"  {_clock(record['evaluated_at'])}  {severity:<8}  {record['site']:<12}  {title} — {_summary(record)}"


def _summary(record: dict[str, Any]) -> str:
    """The notification's summary without the rule title that match summaries start with."""
    return str(record["summary"]).replace(f"{record['rule']['title']}: ", "", 1)


def _feed(source: Path, pipe: Path, total: int, console: Console, stop: threading.Event) -> None:
    """Copy ``source`` into the named pipe and report progress as the flow takes the lines.

    A line counts as read once the flow has taken ``_LEAD`` more lines after it
    (one read chunk and the pipe buffer), so the count never runs ahead of the
    alerts printed by the flow.
    """
    step = max(1, -(-total // (100 if console.tty else _PROGRESS_STEPS)))
    clocks: dict[int, str] = {}
    written = reported = 0

    def report(upto: int) -> None:
        nonlocal reported
        while reported + step <= upto or (upto == total and reported < total):
            reported = min(reported + step, total)
            console.status(f"  … {100 * reported // max(total, 1):3d}% read "
                           f"({reported:,} of {total:,} signals, scenario clock {clocks.pop(reported, '--:--')})")

    try:
        with open(pipe, "wb") as out, open(source, "rb") as lines:
            batch: list[bytes] = []
            for raw in lines:
                batch.append(raw)
                if (written + len(batch)) % step == 0 or written + len(batch) == total:
                    start = raw.find(b'"ts":"')
                    clocks[written + len(batch)] = raw[start + 17:start + 22].decode() if start >= 0 else "--:--"
                if len(batch) == _WRITE_LINES:
                    if stop.is_set():
                        return
                    out.write(b"".join(batch))
                    written += len(batch)
                    batch.clear()
                    report(written - _LEAD)
            out.write(b"".join(batch))
            written += len(batch)
        report(total)
    except BrokenPipeError:
        return  # the flow stopped reading (it failed); the caller reports that


def _release(pipe: Path, feeder: threading.Thread, stop: threading.Event) -> None:
    """Make sure the feeder ends: open the pipe's read side (if the flow never did) and drain it."""
    stop.set()
    fd = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while feeder.is_alive():
            with contextlib.suppress(BlockingIOError):
                os.read(fd, 1 << 16)
            feeder.join(0.01)
    finally:
        os.close(fd)


def replay_with_progress(
    signals: Path, total: int, rules: list[Rule], workers: int, console: Console,
    on_alerts: Callable[[list[Emitted]], None], **options: Any,
) -> ReplayResult:
    """:func:`flows.replay.replay` over ``signals``, reporting how many lines the flow has been given."""
    options.setdefault("source", signals.name)
    if not hasattr(os, "mkfifo"):
        return replay(str(signals), rules, workers=workers, on_alerts=on_alerts, **options)
    with tempfile.TemporaryDirectory(prefix="logystera-demo-") as scratch:
        pipe = Path(scratch) / "signals.pipe"
        os.mkfifo(pipe)
        stop = threading.Event()
        feeder = threading.Thread(target=_feed, args=(signals, pipe, total, console, stop), name="demo-feeder", daemon=True)
        feeder.start()
        try:
            return replay(str(pipe), rules, workers=workers, on_alerts=on_alerts, **options)
        finally:
            _release(pipe, feeder, stop)
            console.end_status()


def _table(records: list[dict[str, Any]], width: int | None) -> list[str]:
    """The final table: started, severity, site, rule, status, seq, summary."""
    header = ("started", "severity", "site", "rule", "status", "seq", "summary")
    rows = [
        (_clock(r["started_at"]), r["severity"], r["site"], r["rule"]["id"], r["status"], str(r["seq"]), _summary(r))
        for r in records
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, tuple("-" * len(h) for h in header), *rows]:
        text = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1]
        if width is not None and len(text) > width:
            text = text[: width - 1] + "…"
        lines.append("  " + text.rstrip())
    return lines


def _totals(records: list[dict[str, Any]], result: ReplayResult, seconds: float) -> list[str]:
    episodes = {r["alert_id"]: r for r in records if r["seq"] == 1}
    by_status = Counter(r["status"] for r in records)
    by_severity = Counter(r["severity"] for r in episodes.values())
    severities = ", ".join(f"{by_severity[s]} {s}" for s in _SEVERITY_ORDER if by_severity[s])
    by_site = Counter(r["site"] for r in episodes.values())
    sites = ", ".join(f"{site} {by_site[site]}" for site in SITES)
    return [
        f"  {len(records)} notifications ({by_status['firing']} firing, {by_status['resolved']} resolved) "
        f"in {len(episodes)} alert episodes: {severities or 'none'}",
        f"  episodes per site: {sites}",
        f"  {result.totals_line} in {seconds:.1f} s",
    ]


TRY_QUERY = 'sql "SELECT site, rule_id, count() AS notifications FROM alerts_final GROUP BY ALL"'


def _invoked_as() -> str:
    """How the user can call us again: the script's path when it lies under the current folder (``.venv/bin/logystera``)."""
    script = Path(sys.argv[0])
    if script.name == "logystera":
        relative = os.path.relpath(script)
        if not relative.startswith(".."):
            return relative
    return "logystera"


def run_demo(data_dir: Path, workers: int = 1, console: Console | None = None, store: str = "none",
             web: str | None = None) -> int:
    """Generate the scenario, replay it through the real flow with the default rules, report; 0 on success.

    With a ``store`` DSN (the CLI passes the embedded default), everything is
    also written to ClickHouse; replaying the day again replaces, never doubles.
    With ``web`` (``HOST:PORT``), the console is then served over that store from
    this process, and the links of the notifications point at it: the run prints
    two of them and serves until SIGINT or SIGTERM (see :func:`serve_until_stopped`).
    """
    from schemas.rule_loader import load_rules

    out = console or Console()
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    signals_path = data_dir / "signals.jsonl"
    alerts_path = data_dir / "alerts.jsonl"
    ruleset = load_rules(RULES_DIR)  # a broken default pack: RuleLoadError, reported by cli.main (exit 2)
    rules = ruleset.enabled_rules
    opened = None if store == "none" else Store.open(store)
    # Bound before the day is made: a port in use is a usage error at once, and the links can name the console.
    web_console = None if web is None else serve_console(web, opened, store, ruleset, str(RULES_DIR))
    link_base = DEFAULT_LINK_BASE if web_console is None else web_console.url

    out.line(f"Logystera demo: one simulated day ({DAY_START[:10]}, UTC) of {len(SITES)} sites: {', '.join(SITES)}")
    started = time.perf_counter()
    total = write_scenario(signals_path)
    out.line(f"  wrote {total:,} signals in {time.perf_counter() - started:.1f} s")
    out.line(f"Replaying through the detection flow with {len(rules)} rules from {RULES_DIR} "
             f"({workers} worker{'s' if workers != 1 else ''}); alerts as they fire:")

    def show(batch: list[Emitted]) -> None:
        for alert in sorted(batch, key=lambda alert: alert.sort_key):
            out.line(alert_line(alert.record.model_dump()))

    started = time.perf_counter()
    result = replay_with_progress(signals_path, total, rules, workers, out, show, store=opened, metrics=ruleset.metrics,
                                  link_base=link_base)
    seconds = time.perf_counter() - started
    with open(alerts_path, "w", encoding="utf-8", newline="\n") as alerts:
        for line in result.alerts:
            alerts.write(line + "\n")

    records = [json.loads(line) for line in result.alerts]
    records.sort(key=lambda r: (r["started_at"], r["site"], r["rule"]["id"], r["alert_id"], r["seq"]))
    width = shutil.get_terminal_size((160, 24)).columns if out.tty else None
    out.line("")
    out.line(f"Alerts ({len(records)} notifications, by episode start):")
    for text in _table(records, width):
        out.line(text)
    out.line("")
    for text in _totals(records, result, seconds):
        out.line(text)
    for line_number, reason in result.rejects[:5]:
        out.line(f"  line {line_number}: {reason}")
    out.line("")
    out.line(f"Signals: {signals_path}")
    out.line(f"Alerts:  {alerts_path}")
    if opened is not None:
        out.line(f"Store:   {opened.address}")
        # While the console serves, this process holds the chDB directory: the query works once it stops.
        when = "after Ctrl-C, " if web_console is not None else ""
        out.line(f"  {when}try: {_invoked_as()} {TRY_QUERY}")
    if web_console is not None:
        with web_console:
            out.line("")
            out.line(f"Web console: {web_console.url}/alerts — two of the alerts:")
            for record in _showcase(records):
                out.line(f"  {record['link']}  {record['severity']:<8}  {record['site']:<12}  {record['rule']['title']}")
            out.line("Press Ctrl-C to stop.")
            serve_until_stopped()
    return 0


def _showcase(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two episodes worth opening: the most severe first firings, of two different rules and sites where there are."""
    first = sorted((r for r in records if r["seq"] == 1 and r["status"] == "firing"),
                   key=lambda r: (_SEVERITY_ORDER.index(r["severity"]), r["started_at"], r["alert_id"]))
    chosen: list[dict[str, Any]] = []
    for record in first:
        if all(record["rule"]["id"] != c["rule"]["id"] and record["site"] != c["site"] for c in chosen):
            chosen.append(record)
    return (chosen + [r for r in first if r not in chosen])[:2]


def serve_until_stopped() -> None:
    """Block until SIGINT (Ctrl-C) or SIGTERM: the console thread serves meanwhile; the caller then stops it."""
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
