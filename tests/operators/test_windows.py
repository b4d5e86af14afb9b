"""The bounded time structures of ``operators/windows.py``, drawn as ASCII timelines.

Each structure is driven the way a fingerprint drives it: at every instant the
clock is ``c``, a signal is added only if ``ts > c − W`` (a late-but-allowed
one may be older than the clock), then everything at ``ts ≤ c − W`` expires.
Times are plain integers (the structures do not care about units).

Two ways to write a scenario:

- **drawn**: one character per instant. ``signals`` gives how many signals
  arrive at that instant (``.`` = none); ``count`` gives the expected window
  count after that instant, e.g. with ``W = 3``::

      signals "1.2..1....."
      count   "11322111000"     the signal at 5 counts at 5, 6, 7: exactly W instants

- **script**: one step per line, ``t=<clock>`` then arrivals and expectations::

      t=10  a b@7   n=2 oldest=7      # a at 10, b stamped 7 (late-but-allowed)

  An arrival is ``NAME`` (stamped at the clock) or ``NAME@TS``; NAME is a
  signal id for evidence and a value for :class:`ValueWindow`; a lone ``-``
  means nothing arrives (a tick). ``key=value`` is an expectation checked
  after the step (a value of ``-`` means none/empty).

Every step of every scenario is also checked against a brute-force model (the
list of every signal added), so each instant answers the lookback questions
(count, oldest, newest, next expiry, anything newer than a horizon) exactly
as a list of signals would. The module's invariants are tested one by one:
half-open windows, one entry per distinct timestamp, late inserts in place,
expiry returning what left oldest first, bounded storage (compaction),
distinct values = keys of ``counts``, and the evidence ring holding the
newest ``capacity`` signals of the window by (``ts``, ``id``).
"""

from __future__ import annotations

import copy
import random
import re
from dataclasses import dataclass, field

import pytest

from operators.windows import EvidenceRing, TimeCounts, ValueWindow

FAR = 10**15  # a horizon past every timestamp used here


# -- the timeline language --------------------------------------------------------------------

@dataclass
class Step:
    """One instant of a script: the clock, what arrives, what must hold afterwards."""

    clock: int
    arrivals: list[tuple[str, int]]  # (name, ts)
    expect: dict[str, str]


_ARRIVAL = re.compile(r"^([a-z]+)(?:@(-?\d+))?$")
_EXPECT = re.compile(r"^([a-z_]+)=(\S*)$")


def script(text: str) -> list[Step]:
    """Parse a script (see the module docstring); ``#`` starts a comment."""
    steps = []
    for number, raw in enumerate(text.strip().splitlines(), start=1):
        line = raw.split("#", 1)[0].split()
        if not line:
            continue
        head = re.match(r"^t=(-?\d+)$", line[0])
        assert head, f"script line {number}: starts with t=<clock>: {raw!r}"
        clock = int(head.group(1))
        step = Step(clock, [], {})
        for token in line[1:]:
            if token == "-":
                continue  # nothing arrives: the clock alone moves (a tick)
            if expected := _EXPECT.match(token):
                step.expect[expected.group(1)] = expected.group(2)
            elif arrival := _ARRIVAL.match(token):
                ts = clock if arrival.group(2) is None else int(arrival.group(2))
                assert ts <= clock, f"script line {number}: {token} is stamped after the clock"
                step.arrivals.append((arrival.group(1), ts))
            else:
                raise AssertionError(f"script line {number}: cannot read {token!r}")
        steps.append(step)
    assert [s.clock for s in steps] == sorted(s.clock for s in steps), "the clock never goes back"
    return steps


def drawn(signals: str) -> list[Step]:
    """One step per character: a digit is that many signals stamped at the instant, ``.`` none."""
    return [
        Step(clock, [(f"s{clock}x{k}", clock) for k in range(0 if char == "." else int(char))], {})
        for clock, char in enumerate(signals)
    ]


def _maybe(value: int | None) -> str:
    return "-" if value is None else str(value)


# -- harnesses: a structure and its brute-force model, driven like a fingerprint ----------------

@dataclass
class CountsHarness:
    """A :class:`TimeCounts` fed like a threshold window, next to the list of its signals."""

    window: int
    counts: TimeCounts = field(default_factory=TimeCounts)
    model: list[int] = field(default_factory=list)  # every ts added and not yet left (the clock never goes back)
    clock: int | None = None
    dropped: list[tuple[int, int]] = field(default_factory=list)  # what the last expire returned

    def step(self, step: Step) -> None:
        self.clock = step.clock
        horizon = step.clock - self.window
        for _, ts in step.arrivals:
            if ts > horizon:  # what a fingerprint adds: the signal is inside the window
                self.counts.add(ts)
                self.model.append(ts)
        self.dropped = list(self.counts.expire(horizon))
        self.model = [ts for ts in self.model if ts > horizon]
        self.check()

    def in_window(self) -> list[int]:
        assert self.clock is not None
        return sorted(ts for ts in self.model if ts > self.clock - self.window)

    def entries(self) -> list[tuple[int, int]]:
        """The live (ts, count) entries, read without touching the structure."""
        return list(copy.deepcopy(self.counts).expire(FAR))

    def check(self) -> None:
        """Every lookback question agrees with the list of signals in the window."""
        assert self.clock is not None
        live = self.in_window()
        assert self.counts.total == len(live)
        assert self.entries() == sorted({ts: live.count(ts) for ts in live}.items())  # one entry per distinct ts
        assert self.counts.oldest() == (live[0] if live else None)
        assert self.counts.newest() == (live[-1] if live else None)
        assert self.counts.next_expiry(self.window) == (live[0] + self.window if live else None)
        edges = {self.clock - self.window - 1, self.clock - self.window, self.clock - 1, self.clock}
        edges |= {ts + d for ts in live[-1:] for d in (-1, 0)}
        for horizon in edges:
            assert self.counts.newer_than(horizon) == any(ts > horizon for ts in live)

    def verify(self, expect: dict[str, str]) -> None:
        seen = {
            "n": str(self.counts.total),
            "oldest": _maybe(self.counts.oldest()),
            "newest": _maybe(self.counts.newest()),
            "next": _maybe(self.counts.next_expiry(self.window)),
            "entries": ",".join(f"{ts}x{n}" for ts, n in self.entries()) or "-",
            "dropped": ",".join(f"{ts}x{n}" for ts, n in self.dropped) or "-",
        }
        for key, want in expect.items():
            assert seen[key] == want, f"t={self.clock}: {key}={seen[key]}, expected {want}"


def run_counts(window: int, steps: list[Step]) -> CountsHarness:
    harness = CountsHarness(window)
    for step in steps:
        harness.step(step)
        harness.verify(step.expect)
    return harness


def counts_row(window: int, signals: str) -> str:
    """The drawn ``count`` row for a drawn ``signals`` row (window count after each instant)."""
    harness = CountsHarness(window)
    row = ""
    for step in drawn(signals):
        harness.step(step)
        row += str(harness.counts.total)
    return row


# -- TimeCounts ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("window", "signals", "count"), [
    # A signal counts for exactly W instants: at ts, …, ts + W − 1 ((c − W, c] is half-open).
    (3, "1.2..1.....", "11322111000"),
    (1, "1.2..1.....", "10200100000"),
    (5, "11111......", "12345432100"),
    # Bursts at one instant are one entry but count every signal.
    (2, "3..3.3.....", "33033330000"),
    (4, "..........", "0000000000"),
])
def test_a_drawn_window_counts_each_signal_for_exactly_w_instants(window: int, signals: str, count: str) -> None:
    assert counts_row(window, signals) == count


def test_entries_arrive_in_time_order_and_leave_oldest_first() -> None:
    run_counts(60, script("""
        t=0    a                 n=1 oldest=0 newest=0 next=60 entries=0x1
        t=5    a a               n=3 oldest=0 newest=5 entries=0x1,5x2
        t=59   -                 n=3 dropped=-
        t=60   -                 n=2 oldest=5 next=65 dropped=0x1     # 0 ≤ 60 − 60: out (half-open)
        t=64   -                 n=2
        t=65   -                 n=0 oldest=- newest=- next=- dropped=5x2
        t=66   a                 n=1 entries=66x1
    """))


def test_a_late_but_allowed_signal_is_inserted_in_place() -> None:
    run_counts(60, script("""
        t=10   a                 entries=10x1
        t=20   a                 entries=10x1,20x1
        t=30   a@15              n=3 entries=10x1,15x1,20x1        # between two entries
        t=31   a@5               n=4 oldest=5 entries=5x1,10x1,15x1,20x1 next=65   # before the oldest
        t=32   a@20 a@15         n=6 entries=5x1,10x1,15x2,20x2    # on an existing timestamp: merged
        t=66   -                 n=5 oldest=10 dropped=5x1
        t=79   a@25              n=3 entries=20x2,25x1 dropped=10x1,15x2
        t=80   -                 n=1 entries=25x1 dropped=20x2      # 20 ≤ 80 − 60
    """))


def test_a_late_signal_already_outside_the_window_is_not_added() -> None:
    # The fingerprint only adds signals inside (c − W, c]; here W = 10 and c = 30.
    run_counts(10, script("""
        t=30   a                 n=1
        t=30   a@20              n=1                  # 20 ≤ 30 − 10: outside, not added
        t=30   a@21              n=2 oldest=21 next=31
        t=31   -                 n=1 dropped=21x1
    """))


def test_expire_returns_every_entry_that_left_with_its_count() -> None:
    counts = TimeCounts()
    for ts, n in [(1, 2), (3, 1), (3, 4), (7, 1), (9, 3)]:
        counts.add(ts, n)
    assert counts.total == 11
    assert counts.expire(0) == ()  # nothing at ts ≤ 0
    assert list(counts.expire(3)) == [(1, 2), (3, 5)]
    assert counts.total == 4
    assert list(counts.expire(3)) == []  # expiring twice at one horizon is a no-op
    assert list(counts.expire(FAR)) == [(7, 1), (9, 3)]
    assert counts.total == 0 and counts.oldest() is None and counts.newest() is None


def test_an_emptied_window_takes_new_signals_at_any_time() -> None:
    counts = TimeCounts()
    counts.add(100)
    counts.expire(100)
    counts.add(50)  # earlier than anything seen: the structure is empty, so it is the only entry
    assert (counts.total, counts.oldest(), counts.newest()) == (1, 50, 50)


@pytest.mark.parametrize("seed", range(25))
def test_random_timelines_with_late_inserts_match_the_list_of_signals(seed: int) -> None:
    """Late inserts and expiry at every instant, against the brute-force model (checked at each step)."""
    rng = random.Random(seed)
    window, lateness = rng.choice([1, 5, 30, 60]), rng.choice([0, 10, 60])
    clock, steps = 0, []
    for _ in range(200):
        clock += rng.choice([0, 0, 1, 1, 2, 7, 40])
        arrivals = [("a", clock - rng.randrange(lateness + 1) if rng.random() < 0.3 else clock)
                    for _ in range(rng.choice([0, 0, 1, 1, 1, 3]))]
        steps.append(Step(clock, arrivals, {}))
    run_counts(window, steps)


def test_storage_stays_bounded_by_the_live_window() -> None:
    """Expired entries are skipped, then compacted: storage is at most the live entries plus max(32, them)."""
    counts, window = TimeCounts(), 50
    for clock in range(10_000):
        counts.add(clock)
        counts.expire(clock - window)
        live = counts.total
        assert live == min(clock + 1, window)
        stored = len(counts._times)  # the one white-box look: the invariant is about storage
        assert stored - live <= max(32, live), (clock, stored, live)
        assert len(counts._counts) == stored


def test_shift_moves_what_leaves_the_current_window_into_the_baseline() -> None:
    """``add(ts, n)`` takes a whole expired entry at once: how shift hands signals to its baseline."""
    current, baseline = TimeCounts(), TimeCounts()
    for ts in (1, 1, 2, 5):
        current.add(ts)
    for ts, n in current.expire(2):
        baseline.add(ts, n)
    assert (current.total, baseline.total) == (1, 3)
    assert list(copy.deepcopy(baseline).expire(FAR)) == [(1, 2), (2, 1)]


# -- ValueWindow ----------------------------------------------------------------------------------

@dataclass
class ValuesHarness:
    """A :class:`ValueWindow` fed like a distinct window (arrival NAME = the field's value)."""

    window: int
    values: ValueWindow = field(default_factory=ValueWindow)
    model: list[tuple[int, str]] = field(default_factory=list)
    clock: int = 0

    def step(self, step: Step) -> None:
        self.clock = step.clock
        horizon = step.clock - self.window
        for value, ts in step.arrivals:
            if ts > horizon:
                self.values.add(ts, value)
                self.model.append((ts, value))
        self.values.expire(horizon)
        live = [value for ts, value in self.model if ts > horizon]
        # The invariant: the distinct values in the window are the keys of ``counts``, with their counts.
        assert self.values.counts == {value: live.count(value) for value in set(live)}
        for key, want in step.expect.items():
            seen = {"distinct": str(len(self.values.counts)), "values": ",".join(sorted(self.values.counts)) or "-"}[key]
            assert seen == want, f"t={self.clock}: {key}={seen}, expected {want}"


def run_values(window: int, text: str) -> None:
    harness = ValuesHarness(window)
    for step in script(text):
        harness.step(step)


def test_distinct_values_come_and_go_with_the_window() -> None:
    run_values(10, """
        t=0    x                 distinct=1 values=x
        t=2    y x               distinct=2 values=x,y
        t=5    z@1               distinct=3 values=x,y,z          # late-but-allowed, inserted at 1
        t=10   -                 distinct=3
        t=11   -                 distinct=2 values=x,y            # 0 and 1 left: x is still there at 2, z is gone
        t=12   -                 distinct=0 values=-
        t=13   x x x             distinct=1 values=x
        t=20   y@13              distinct=2
        t=23   -                 distinct=0
    """)


def test_a_value_stays_while_any_of_its_signals_is_in_the_window() -> None:
    run_values(5, """
        t=0    a
        t=3    a
        t=4    b
        t=5    -                 values=a,b          # a at 0 left, a at 3 keeps it
        t=8    -                 values=b
        t=9    -                 values=-
    """)


@pytest.mark.parametrize("seed", range(20))
def test_random_value_timelines_match_the_list_of_values(seed: int) -> None:
    rng = random.Random(seed)
    harness = ValuesHarness(rng.choice([1, 7, 60]))
    clock = 0
    for _ in range(400):
        clock += rng.choice([0, 1, 1, 3, 20])
        arrivals = [(rng.choice("abcdef"), clock - rng.randrange(30) if rng.random() < 0.3 else clock)
                    for _ in range(rng.choice([0, 1, 1, 2]))]
        harness.step(Step(clock, arrivals, {}))


def test_value_window_storage_stays_bounded() -> None:
    values = ValueWindow()
    for clock in range(5000):
        values.add(clock, clock % 7)
        values.expire(clock - 40)
        live = sum(values.counts.values())
        assert live == min(clock + 1, 40)
        assert len(values._entries) - live <= max(32, live)


# -- EvidenceRing ---------------------------------------------------------------------------------

@dataclass
class EvidenceHarness:
    """An :class:`EvidenceRing` next to a window of the same signals, as a threshold fingerprint keeps them."""

    window: int
    capacity: int
    ring: EvidenceRing = field(init=False)
    model: list[tuple[int, str, int]] = field(default_factory=list)  # (ts, id, arrival)
    clock: int = 0
    arrivals: int = 0

    def __post_init__(self) -> None:
        self.ring = EvidenceRing(self.capacity)

    def step(self, step: Step) -> None:
        self.clock = step.clock
        horizon = step.clock - self.window
        for name, ts in step.arrivals:
            if ts > horizon:
                self.arrivals += 1
                self.ring.add(ts, name, self.arrivals, f"{name}@{ts}".encode())
                self.model.append((ts, name, self.arrivals))
        self.check()
        if "ev" in step.expect:
            assert self.evidence() == step.expect["ev"], f"t={self.clock}: ev={self.evidence()}, expected {step.expect['ev']}"

    def evidence(self) -> str:
        return ",".join(raw.decode() for raw in self.ring.since(self.clock - self.window)) or "-"

    def check(self) -> None:
        """The module's invariant: the ring restricted to the window = the newest ``capacity`` of the window."""
        horizon = self.clock - self.window
        in_window = sorted(entry for entry in self.model if entry[0] > horizon)
        newest = in_window[-self.capacity:]
        assert self.ring.since(horizon) == [f"{name}@{ts}".encode() for ts, name, _ in newest]
        assert len(self.ring.entries) <= self.capacity


def run_evidence(window: int, capacity: int, text: str) -> EvidenceHarness:
    harness = EvidenceHarness(window, capacity)
    for step in script(text):
        harness.step(step)
    return harness


def test_the_ring_keeps_the_newest_signals_in_ascending_order() -> None:
    run_evidence(60, 3, """
        t=0    a                 ev=a@0
        t=1    b                 ev=a@0,b@1
        t=2    c                 ev=a@0,b@1,c@2
        t=3    d                 ev=b@1,c@2,d@3          # capacity 3: the oldest goes
        t=4    e@2               ev=c@2,e@2,d@3          # late: sorted in by (ts, id); b@1 goes
    """)


def test_ties_on_ts_are_ordered_by_id_then_arrival() -> None:
    run_evidence(60, 4, """
        t=5    m k z             ev=k@5,m@5,z@5
        t=5    k                 ev=k@5,k@5,m@5,z@5      # same (ts, id): arrival order keeps both
        t=6    a@5               ev=k@5,k@5,m@5,z@5      # (5, a) is older than all four: not kept
        t=6    b                 ev=k@5,m@5,z@5,b@6
    """)


def test_a_late_signal_older_than_a_full_ring_is_not_kept() -> None:
    run_evidence(100, 2, """
        t=10   a
        t=20   b                 ev=a@10,b@20
        t=30   c@5               ev=a@10,b@20            # older than everything kept, ring full
        t=30   d@15              ev=d@15,b@20            # newer than a: a goes
    """)


def test_evidence_follows_the_window_as_it_moves() -> None:
    run_evidence(10, 3, """
        t=0    a
        t=4    b
        t=8    c                 ev=a@0,b@4,c@8
        t=10   -                 ev=b@4,c@8              # a at 0 ≤ 10 − 10: out of the window, out of the evidence
        t=14   -                 ev=c@8
        t=18   -                 ev=-
        t=19   d                 ev=d@19
    """)


def test_since_none_and_clear_serve_bundles() -> None:
    ring = EvidenceRing(2)
    for arrival, (ts, name) in enumerate([(1, "a"), (2, "b"), (3, "c")], start=1):
        ring.add(ts, name, arrival, name.encode())
    assert ring.since(None) == [b"b", b"c"]  # a bundle's evidence: every kept signal, no window
    assert ring.since(2) == [b"c"]
    ring.clear()
    assert ring.since(None) == []
    ring.add(0, "z", 4, b"z")  # a new bundle starts from nothing, whatever came before
    assert ring.since(None) == [b"z"]


def test_a_ring_of_one_keeps_the_newest() -> None:
    run_evidence(50, 1, """
        t=1    a                 ev=a@1
        t=2    b                 ev=b@2
        t=3    c@1               ev=b@2
        t=3    d@2               ev=d@2                  # (2, d) > (2, b)
    """)


@pytest.mark.parametrize("seed", range(40))
def test_random_evidence_timelines_keep_the_newest_of_the_window(seed: int) -> None:
    """Late inserts, ties and expiry at random; the invariant is checked at every instant."""
    rng = random.Random(seed)
    harness = EvidenceHarness(rng.choice([1, 10, 60]), rng.choice([1, 2, 3, 10]))
    clock = 0
    for _ in range(300):
        clock += rng.choice([0, 0, 1, 2, 15])
        arrivals = [(rng.choice("abcxyz"), clock - rng.randrange(60) if rng.random() < 0.3 else clock)
                    for _ in range(rng.choice([0, 1, 1, 2, 4]))]
        harness.step(Step(clock, arrivals, {}))


# -- the language itself ---------------------------------------------------------------------------

def test_the_script_reader_reads_what_the_docstring_says() -> None:
    (step,) = script("t=10  a b@7   n=2 oldest=7      # comment")
    assert step == Step(10, [("a", 10), ("b", 7)], {"n": "2", "oldest": "7"})
    assert [s.arrivals for s in drawn("2.1")] == [[("s0x0", 0), ("s0x1", 0)], [], [("s2x0", 2)]]
    with pytest.raises(AssertionError):
        script("t=5 a@6")  # stamped after the clock: not a late signal, a mistake in the script

