"""JSON Lines read from files and pipes: the longest line a reader holds, for signals and for notification records.

A reader keeps at most the limit of a line. A line that long or longer (its newline not counted) is
never held whole: the reader drops the rest of it as it streams by, and the line is rejected with
:func:`overlong` under its own number, so the lines after it keep theirs. Without the bound, one line
with no newline in it (a binary file, ``/dev/zero``, a dump of something else) was read whole: an
800 MB line made a replay of 2.4 GB, and a longer one ended it out of memory; ``deliver`` copied its
growing line once per 64 KiB read.

The limits (decision 154): a signal is at most 2,048 bytes in compact JSON, so a line of 16 KiB would
need seven parts of whitespace to one of signal to be valid; replay reads a chunk of 10,000 lines, so
a chunk holds at most 160 MiB of lines. A notification record carries its evidence (signals) and is a
few tens of kilobytes; ``deliver`` holds a line up to 1 MiB, the gateway's limit of a request body.
"""

MAX_SIGNAL_LINE_BYTES = 16 << 10
"""The longest line of signals read (replay's files and pipes; a longer Kafka record is rejected alike)."""

MAX_RECORD_LINE_BYTES = 1 << 20
"""The longest line of notification records read (``deliver FILE``)."""


def overlong(limit: int) -> str:
    """Why a line of ``limit`` bytes or more is rejected."""
    return f"line of {limit} bytes or more, over the limit of a line"
