"""What deciding a hold costs per notification: silences, mute times and inhibition (delivery/holds.py).

Run from the repository root::

    .venv/bin/python bench/holds.py [--notifications 20000]

Measures :meth:`delivery.holds.HoldPolicy.hold` (asked once per notification
and channel before its first call) with 0, 10, 100 and 1,000 active silences
of three matchers each (one regex) that do not match — the worst case, every
silence is tried — and with a mute time named by the channel; and
:meth:`delivery.holds.Inhibitor.observe` (once per notification) with the
default pack's inhibit rule and 1,000 firing sources. Besides the time (noisy
on a shared machine), it prints the function calls per decision counted by
cProfile, which do not depend on the load.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable

from delivery.holds import HoldPolicy, Inhibitor, Silence
from schemas.alerts import NotificationRecord
from schemas.matchers import parse_matcher
from schemas.rules import InhibitRule, MuteTime
from tests.support.factories import make_notification

AT = 1_764_324_000_000  # 2025-11-28T10:00:00Z, a Friday


def silences(count: int) -> tuple[Silence, ...]:
    matchers = ("site=other-site", "rule=~php-.*", "severity!=info")
    return tuple(Silence(f"{n:032x}", tuple(map(parse_matcher, matchers)), AT - 1, AT + 3_600_000, "bench", "load", AT)
                 for n in range(count))


def measure(label: str, decide: Callable[[NotificationRecord], object], records: list[NotificationRecord]) -> None:
    started = time.perf_counter()
    for record in records:
        decide(record)
    per = (time.perf_counter() - started) / len(records) * 1e6
    sample = records[:1000]
    profile = cProfile.Profile()
    profile.enable()
    for record in sample:
        decide(record)
    profile.disable()
    calls = pstats.Stats(profile).total_calls / len(sample)  # type: ignore[attr-defined]
    print(f"{label:<48} {per:9.2f} µs  {calls:9.1f} calls per notification")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notifications", type=int, default=20_000)
    args = parser.parse_args()
    records = [NotificationRecord.model_validate(make_notification(alert_id=f"{n:032x}"))
               for n in range(args.notifications)]
    print(f"{'decision':<48} {'time':>12}  {'calls':>9}")
    for count in (0, 10, 100, 1000):
        policy = HoldPolicy()
        policy.silences = silences(count)
        measure(f"hold, {count} active silences (none matching)", lambda r, p=policy: p.hold(r, "oncall", None, AT), records)
    window = MuteTime.model_validate({"name": "night", "timezone": "Europe/Berlin",
                                      "intervals": [{"weekdays": ["sunday"], "times": [{"start": "01:00", "end": "04:00"}]}]})
    muted = HoldPolicy([window], {"oncall": ["night"]})
    measure("hold, a mute time named by the channel (off)", lambda r: muted.hold(r, "oncall", None, AT), records)
    inhibitor = Inhibitor([InhibitRule(name="pack", source=["rule=integration-silent"],
                                       target=["kind=absence", "rule!=integration-silent"], equal=["site"])])
    for n in range(1000):
        source = make_notification(alert_id=f"{n + 10**6:032x}", site=f"site-{n}", rule={
            "id": "integration-silent", "title": "t", "kind": "absence", "description": None},
            value={"last_seen_at": "2026-11-28T10:01:00.000Z", "silent_for_s": 300.0}, group={})
        inhibitor.observe(NotificationRecord.model_validate(source))
    measure("inhibitor observe, 1000 firing sources", inhibitor.observe, records)


if __name__ == "__main__":
    main()
