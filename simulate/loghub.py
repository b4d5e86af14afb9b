"""Turn real sshd logs (loghub's ``OpenSSH_2k.log``) into ``auth`` signals, the privacy-respecting way.

What goes in: syslog lines such as
``Dec 10 07:07:45 LabSZ sshd[24206]: Failed password for invalid user test9 from 52.80.34.196 port 36060 ssh2``.
What comes out: signal envelopes (signals.md) in time order, ``auth`` signals
plus, optionally, the gateway ticks every 10 s that a live pipeline would
have written for the site.

Privacy: a user name travels only as ``identity_hash(user, site_key)`` with
its length; an IPv4 address only as its ``/24`` (IPv6: ``/48``); a host name
(PAM's ``rhost=`` when reverse DNS resolved) only as a hash. Nothing else of
the line is kept.

One sshd attempt is logged several times (``Invalid user``, PAM's
``authentication failure``, ``Failed password``), so signals are made from
sshd's own verdict per attempt and the echoes are *folded* into it:

- ``Failed <method> for [invalid user] U from IP`` → one failure
  (``message repeated N times: [ Failed … ]`` → N more);
- ``Accepted <method> for U from IP`` → success;
- ``Invalid user U from IP`` and PAM ``authentication failure`` lines →
  folded into the next ``Failed`` line of the same sshd process; if none
  comes (the client disconnected first, or the log ends within sshd's 120 s
  login grace time), they become one failure themselves (method
  ``password`` if PAM checked a password, else ``other``);
- ``session closed for user U`` → logout (``session opened`` is folded into
  the ``Accepted`` line before it);
- method ``password`` and ``keyboard-interactive`` → ``password``; anything
  else (``none``, ``publickey``…) → ``other``; user ``root`` → ``privileged``.

Every other line is counted, by kind, in :class:`ConversionStats` (never
dropped silently): disconnects, reverse-mapping warnings, PAM retry notes…

Time: syslog lines carry no year and no zone. The caller names the year
(:data:`ASSUMED_YEAR` for the loghub sample, whose lines all fall on Dec 10:
any fixed year gives the same detections, since rules only use differences
between timestamps), the clock is read as UTC, and a month that goes
backwards (Dec → Jan) moves to the next year.
"""

from __future__ import annotations

import argparse
import calendar
import heapq
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.factory import identity_hash, make_signal, make_tick, network_prefix, signal_line

ASSUMED_YEAR = 2026
"""The year stamped on the loghub sample's lines (the log has none; see the module docstring)."""

LOGHUB_DIR = Path(__file__).resolve().parent / "data" / "loghub"
"""The loghub samples (https://github.com/logpai/loghub; source and terms in its README.md), shipped as package data."""
OPENSSH_SAMPLE = LOGHUB_DIR / "OpenSSH_2k.log"

LOGIN_GRACE_MS = 120_000
"""sshd's default LoginGraceTime: no ``Failed`` line can follow its ``Invalid user`` line later than this."""
TICK_INTERVAL_MS = 10_000

_MONTHS = {name: index for index, name in enumerate(calendar.month_abbr) if name}
_SYSLOG = re.compile(
    r"^(?P<month>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<hh>\d{2}):(?P<mm>\d{2}):(?P<ss>\d{2}) \S+ sshd\[(?P<pid>\d+)\]: (?P<msg>.*?)\s*$"
)
_FAILED = re.compile(r"^Failed (?P<method>\S+) for (?:invalid user )?(?P<user>.*) from (?P<ip>\S+) port \d+ \S+$")
_ACCEPTED = re.compile(r"^Accepted (?P<method>\S+) for (?P<user>.*) from (?P<ip>\S+) port \d+ \S+$")
_REPEATED = re.compile(r"^message repeated (?P<count>\d+) times: \[ (?P<inner>.*?) ?\]$")
_INVALID = re.compile(r"^Invalid user (?P<user>.*) from (?P<ip>\S+)$")
_PAM_FAILURE = re.compile(r"^pam_unix\(sshd:auth\): authentication failure;.*? rhost=(?P<rhost>\S*)(?:\s+user=(?P<user>\S+))?$")
_SESSION = re.compile(r"^pam_unix\(sshd:session\): session (?P<what>opened|closed) for user (?P<user>\S+)")

# Lines that echo an attempt counted from another line.
_FOLDED_PREFIXES = (
    "input_userauth_request: invalid user",
    "pam_unix(sshd:auth): check pass;",
    "PAM ",  # "PAM 4 more authentication failures", "PAM service(sshd) ignoring max retries"
)
# Lines that are not authentication events, by the kind reported in the statistics.
_NOT_AUTH = (
    ("Received disconnect from", "disconnect"),
    ("error: Received disconnect from", "disconnect"),
    ("Connection closed by", "connection closed"),
    ("Disconnecting:", "disconnect"),
    ("Did not receive identification string", "no identification"),
    ("reverse mapping checking getaddrinfo", "reverse mapping warning"),
    ("fatal:", "connection error"),
)
_SESSION_ENDS = ("Received disconnect from", "error: Received disconnect from", "Connection closed by", "Disconnecting:", "fatal:")


@dataclass
class ConversionStats:
    """How the input lines were used; ``lines == emitted_lines + folded + not_auth_lines + unparsed``."""

    lines: int = 0
    emitted_lines: int = 0
    folded: int = 0
    not_auth: Counter[str] = field(default_factory=Counter)
    unparsed: int = 0
    signals: int = 0
    ticks: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def not_auth_lines(self) -> int:
        """Lines that are sshd lines but no authentication event."""
        return sum(self.not_auth.values())

    @property
    def skipped(self) -> int:
        """Lines that produced no signal and were not folded into one: not auth events, or not sshd lines."""
        return self.not_auth_lines + self.unparsed

    def report(self) -> str:
        """A few lines for people."""
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.not_auth.items(), key=lambda item: (-item[1], item[0])))
        outcomes = ", ".join(f"{count} {outcome}" for outcome, count in sorted(self.outcomes.items()))
        return (
            f"{self.lines} lines: {self.emitted_lines} became {self.signals} auth signals ({outcomes}), "
            f"{self.folded} folded into the attempt they echo, {self.not_auth_lines} not auth events ({kinds}), "
            f"{self.unparsed} not sshd lines; {self.ticks} ticks added"
        )


def network_source(address: str, site_key: str) -> str:
    """An address as its network prefix (:func:`schemas.factory.network_prefix`); a host name as its keyed hash."""
    try:
        return network_prefix(address)
    except ValueError:
        return identity_hash(address.lower(), site_key)


def _method(name: str) -> str:
    return "password" if name in ("password", "keyboard-interactive") else "other"


@dataclass
class _Pending:
    """Evidence of an attempt (``Invalid user``, PAM failure) waiting for the ``Failed`` line that counts it."""

    ts: int
    line: int
    user: str | None
    source: str | None
    method: str
    lines: int = 1


class _Converter:
    def __init__(self, site: str, year: int, site_key: str, stats: ConversionStats, ticks: bool) -> None:
        self.site = site
        self.year = year
        self.last_month = 0
        self.site_key = site_key
        self.stats = stats
        self.ticks = ticks
        self.pending: dict[str, _Pending] = {}
        self.out: list[tuple[int, int, dict[str, Any]]] = []
        self.order = 0
        self.next_tick: int | None = None
        self.clock = 0

    # -- time ------------------------------------------------------------------------------
    def timestamp(self, match: re.Match[str]) -> int | None:
        month = _MONTHS.get(match["month"])
        if month is None:
            return None
        if month < self.last_month:
            self.year += 1
        day = int(match["day"])
        hh, mm, ss = int(match["hh"]), int(match["mm"]), int(match["ss"])
        if not 1 <= day <= calendar.monthrange(self.year, month)[1] or hh > 23 or mm > 59 or ss > 59:
            return None
        self.last_month = month
        return calendar.timegm((self.year, month, day, hh, mm, ss)) * 1000

    # -- output ----------------------------------------------------------------------------
    def auth(self, ts: int, line: int, part: int | None, outcome: str, method: str, user: str | None,
             source: str | None) -> None:
        data: dict[str, Any] = {"outcome": outcome, "method": method}
        if user is not None:
            data["user_hash"] = identity_hash(user, self.site_key)
            data["user_len"] = min(len(user), 256)
        if source is not None:
            data["source"] = source
        if user == "root":
            data["privileged"] = True
        id_ = f"openssh-{line:06d}" if part is None else f"openssh-{line:06d}-{part:03d}"
        heapq.heappush(self.out, (ts, self.order, make_signal(self.site, "auth", ts, id_, **data)))
        self.order += 1
        self.stats.signals += 1
        self.stats.outcomes[outcome] += 1

    def release(self, final: bool = False) -> Iterator[dict[str, Any]]:
        """Signals no pending evidence can precede any more, with the ticks up to them."""
        horizon = min((p.ts for p in self.pending.values()), default=None)
        while self.out and (final or horizon is None or self.out[0][0] < horizon):
            ts, _, envelope = heapq.heappop(self.out)
            yield from self.ticks_until(ts)
            yield envelope
        if final:
            yield from self.ticks_until(self.clock + TICK_INTERVAL_MS - 1)

    def ticks_until(self, ts: int) -> Iterator[dict[str, Any]]:
        if not self.ticks:
            return
        if self.next_tick is None:
            self.next_tick = ts - ts % TICK_INTERVAL_MS
        while self.next_tick < ts:
            yield make_tick(self.site, self.next_tick)
            self.stats.ticks += 1
            self.next_tick += TICK_INTERVAL_MS

    # -- pending evidence ----------------------------------------------------------------------
    def settle(self, pid: str, counted_by_failed: bool) -> None:
        pending = self.pending.pop(pid, None)
        if pending is None:
            return
        if counted_by_failed:
            self.stats.folded += pending.lines
            return
        self.auth(pending.ts, pending.line, None, "failure", pending.method, pending.user, pending.source)
        self.stats.emitted_lines += 1
        self.stats.folded += pending.lines - 1

    def expire(self, now: int) -> None:
        for pid in [pid for pid, p in self.pending.items() if now - p.ts > LOGIN_GRACE_MS]:
            self.settle(pid, counted_by_failed=False)

    def evidence(self, pid: str, ts: int, line: int, user: str | None, source: str | None, method: str) -> None:
        pending = self.pending.get(pid)
        if pending is None:
            self.pending[pid] = _Pending(ts, line, user, source, method)
            return
        pending.lines += 1
        pending.method = "password" if "password" in (pending.method, method) else pending.method
        pending.user = pending.user if pending.user is not None else user
        pending.source = pending.source if pending.source is not None else source

    # -- one line ------------------------------------------------------------------------------
    def line(self, number: int, text: str) -> Iterator[dict[str, Any]]:
        stats = self.stats
        stats.lines += 1
        syslog = _SYSLOG.match(text)
        ts = self.timestamp(syslog) if syslog else None
        if syslog is None or ts is None:
            stats.unparsed += 1
            return
        self.clock = max(self.clock, ts)
        self.expire(self.clock)
        pid, msg = syslog["pid"], syslog["msg"]
        if self.attempt(pid, ts, number, msg):
            pass
        elif msg.startswith(_FOLDED_PREFIXES):
            stats.folded += 1
        elif (invalid := _INVALID.match(msg)) is not None:
            # The client named a user; no password was tried (yet): the method is unknown.
            self.evidence(pid, ts, number, invalid["user"], network_source(invalid["ip"], self.site_key), "other")
        elif (pam := _PAM_FAILURE.match(msg)) is not None:
            source = network_source(pam["rhost"], self.site_key) if pam["rhost"] else None
            self.evidence(pid, ts, number, pam["user"], source, "password")
        elif (session := _SESSION.match(msg)) is not None:
            if session["what"] == "closed":
                self.auth(ts, number, None, "logout", "other", session["user"], None)
                stats.emitted_lines += 1
            else:
                stats.folded += 1
        else:
            kind = next((kind for prefix, kind in _NOT_AUTH if msg.startswith(prefix)), "other sshd message")
            stats.not_auth[kind] += 1
            if msg.startswith(_SESSION_ENDS):
                self.settle(pid, counted_by_failed=False)
        yield from self.release()

    def attempt(self, pid: str, ts: int, number: int, msg: str) -> bool:
        """A ``Failed``/``Accepted`` verdict (or a repeat of one); False when ``msg`` is none of these."""
        count, part = 1, None
        repeated = _REPEATED.match(msg)
        if repeated is not None:
            count, part, msg = int(repeated["count"]), 0, repeated["inner"]
        if (failed := _FAILED.match(msg)) is not None:
            outcome, match = "failure", failed
        elif (accepted := _ACCEPTED.match(msg)) is not None:
            outcome, match = "success", accepted
        else:
            return False
        self.settle(pid, counted_by_failed=True)
        source = network_source(match["ip"], self.site_key)
        for index in range(count):
            self.auth(ts, number, index if part is not None else None, outcome, _method(match["method"]), match["user"], source)
        self.stats.emitted_lines += 1
        return True


def convert_openssh(
    lines: Iterable[str], site: str, year: int, *, site_key: str | None = None,
    stats: ConversionStats | None = None, ticks: bool = True,
) -> Iterator[dict[str, Any]]:
    """Signal envelopes (``auth``, and ticks unless ``ticks=False``) for sshd syslog ``lines``, in ts order.

    ``year`` is the year of the first line (syslog omits it). ``site_key``
    keys the identity hashes; it defaults to the site id, which is fine for
    research data, while a live site should use a secret (a public key lets
    anyone test a guess such as ``root``). Pass ``stats`` to learn how every
    line was used; it is complete once the iterator is exhausted.
    """
    counts = stats if stats is not None else ConversionStats()
    converter = _Converter(site, year, site if site_key is None else site_key, counts, ticks)
    for number, text in enumerate(lines, start=1):
        yield from converter.line(number, text)
    for pid in list(converter.pending):
        converter.settle(pid, counted_by_failed=False)
    yield from converter.release(final=True)


def convert_file(source: str | Path, target: str | Path, site: str, year: int, ticks: bool = True) -> ConversionStats:
    """Convert an sshd log file into a JSON Lines file of signals; return the statistics."""
    stats = ConversionStats()
    with open(source, encoding="utf-8", errors="replace") as lines, open(target, "w", encoding="utf-8", newline="\n") as out:
        for envelope in convert_openssh(lines, site, year, stats=stats, ticks=ticks):
            out.write(signal_line(envelope) + "\n")
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulate.loghub [LOG] OUT``: convert an sshd log and print how its lines were used."""
    parser = argparse.ArgumentParser(prog="python -m simulate.loghub", description=__doc__.splitlines()[0])
    parser.add_argument("log", nargs="?", default=str(OPENSSH_SAMPLE), help="sshd syslog file (default: the loghub sample)")
    parser.add_argument("out", help="JSON Lines file of signals to write")
    parser.add_argument("--site", default="labsz-ssh")
    parser.add_argument("--year", type=int, default=ASSUMED_YEAR)
    parser.add_argument("--no-ticks", action="store_true")
    args = parser.parse_args(argv)
    try:
        stats = convert_file(args.log, args.out, args.site, args.year, ticks=not args.no_ticks)
    except OSError as error:
        print(f"{error.filename}: {error.strerror or error}", file=sys.stderr)
        return 2
    print(stats.report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
