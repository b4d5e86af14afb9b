"""Lines over the limit of a line (schemas/lines.py): never held whole, rejected under their own number, the rest read on.

Replay's reader (flows/sources.py) reads a line up to ``MAX_SIGNAL_LINE_BYTES`` and stands one
object for every longer line; ``deliver``'s reader (delivery/file_source.py) does the same up to
``MAX_RECORD_LINE_BYTES``. Before, one line with no newline was read whole into memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from delivery.file_source import OVERLONG_LINE as OVERLONG_TEXT
from delivery.file_source import LineReader
from flows.sources import OVERLONG_LINE, PIECES_AT_ONCE, JsonLinesSource, Line
from schemas.factory import make_signal, signal_line
from schemas.lines import MAX_RECORD_LINE_BYTES, MAX_SIGNAL_LINE_BYTES, overlong
from schemas.records import parse_lines
from tests.support.processes import LOGYSTERA

LIMIT = MAX_SIGNAL_LINE_BYTES
RULES = Path(__file__).resolve().parents[2] / "rules"


def mail(second: int) -> str:
    """A valid signal line (sent mail, which no rule of the pack notifies on alone)."""
    return signal_line(make_signal("shop-eu", "mail", f"2026-11-28T10:00:{second:02d}.000Z", f"mail-{second:06d}",
                                   outcome="sent", transport="smtp"))


def read_all(path: Path, chunk_lines: int, partitions: int) -> list[Line]:
    """Every numbered line every partition of a replay source reads, in line order."""
    source = JsonLinesSource(path, chunk_lines, partitions)
    lines: list[Line] = []
    for part in source.list_parts():
        reader = source.build_part("signals", part, None)
        try:
            while True:
                for chunk in reader.next_batch():
                    lines += chunk
        except StopIteration:
            pass
        finally:
            reader.close()
    return sorted(lines)


@pytest.mark.parametrize("before", [0, PIECES_AT_ONCE - 2, PIECES_AT_ONCE - 1, PIECES_AT_ONCE, PIECES_AT_ONCE + 1])
@pytest.mark.parametrize(("chunk_lines", "partitions"), [(10_000, 1), (3, 1), (3, 2), (PIECES_AT_ONCE, 3)])
def test_a_line_at_the_limit_or_longer_is_one_line_of_its_own_wherever_it_falls(
    tmp_path: Path, before: int, chunk_lines: int, partitions: int,
) -> None:
    short = [f"line {n}\n".encode() for n in range(before)]
    given = [
        *short,
        b"x" * (LIMIT - 1) + b"\n",  # just under the limit: read as it is
        b"y" * LIMIT + b"\n",  # at the limit
        b"z" * (3 * LIMIT + 5) + b"\n",  # three times over, ending across pieces
        b"\n",
        b"after\n",
        b"w" * (2 * LIMIT),  # the last line, without a newline
    ]
    path = tmp_path / "lines.jsonl"
    path.write_bytes(b"".join(given))
    expected = [*short, given[len(short)], OVERLONG_LINE, OVERLONG_LINE, b"\n", b"after\n", OVERLONG_LINE]
    assert read_all(path, chunk_lines, partitions) == list(enumerate(expected, 1))


def test_a_signal_line_is_valid_up_to_the_limit_and_rejected_for_its_length_from_it() -> None:
    compact = mail(1).encode()
    padded = b"{" + b" " * (LIMIT - 1 - len(compact)) + compact[1:]  # whitespace in a valid signal is allowed
    records, rejects = parse_lines([(1, padded), (2, padded.replace(b"{", b"{ ", 1)), (3, OVERLONG_LINE)])
    assert [record.site for record in records] == ["shop-eu"]
    assert rejects == [(2, overlong(LIMIT)), (3, overlong(LIMIT))]


@pytest.mark.process
def test_replay_of_a_pipe_with_a_300_mb_line_holds_a_few_mb_of_it_and_goes_on(tmp_path: Path) -> None:
    signals = [mail(1), mail(2)]
    # A wrapper process, so that the peak resident size is the replay's alone.
    measured = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code, file=sys.stderr)")
    assert LOGYSTERA is not None
    with (tmp_path / "out").open("w+b") as out, (tmp_path / "err").open("w+b") as err:
        run = subprocess.Popen([sys.executable, "-c", measured, LOGYSTERA, "replay", "-", "--rules", str(RULES)],
                               stdin=subprocess.PIPE, stdout=out, stderr=err)
        assert run.stdin is not None
        run.stdin.write(signals[0].encode() + b"\n")
        block = b"[" * (1 << 20)  # nested 300,000 deep: a parser given it would give up, or worse
        for _ in range(300):
            run.stdin.write(block)
        run.stdin.write(b"\n" + signals[1].encode() + b"\n")
        run.stdin.close()
        assert run.wait(timeout=120) == 0
        out.seek(0)
        err.seek(0)
        printed, stderr = out.read(), err.read().decode()
    *lines, peak = stderr.splitlines()
    peak_kib, code = map(int, peak.split())
    assert code == 0, stderr[-2000:]
    assert lines == [f"line 2: {overlong(LIMIT)}", "replayed 2 signals, 1 invalid, 0 late"]
    assert printed == b""  # sent mail: no rule of the pack notifies on it
    assert peak_kib < 250 * 1024, f"{peak_kib} KiB"  # read whole, the line alone was 300 MiB (and 2.4 GB for 800 MB)


def test_deliver_reads_a_record_line_up_to_its_limit_and_hands_one_mark_for_a_longer_one() -> None:
    record_limit = MAX_RECORD_LINE_BYTES
    given = [b'{"a":1}\n', b"x" * (record_limit - 1) + b"\n", b"y" * (3 * record_limit) + b"\n", b"\n", b"\xff{}\n",
             b"z" * record_limit]  # the last line, at the limit, without a newline

    async def read() -> list[str]:
        read_end, write_end = os.pipe()
        reader = LineReader(read_end, close=True)

        def feed() -> None:
            with os.fdopen(write_end, "wb") as stream:
                for line in given:
                    for start in range(0, len(line), 50_000):  # in pieces, as a pipe delivers them
                        stream.write(line[start:start + 50_000])
                        stream.flush()

        threading.Thread(target=feed).start()
        lines: list[str] = []
        while (batch := await reader.batch(10)) is not None:
            lines += batch
        return lines

    lines = asyncio.run(read())
    assert lines == ['{"a":1}', "x" * (record_limit - 1), OVERLONG_TEXT, "", "\ufffd{}", OVERLONG_TEXT]
    assert lines[2] is OVERLONG_TEXT and lines[5] is OVERLONG_TEXT  # known by identity: no line read can be it
    assert json.loads(lines[0]) == {"a": 1}
