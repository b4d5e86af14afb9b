"""Input for replay: a JSON Lines file (or stdin) read in chunks of numbered lines.

The file is cut into chunks of ``chunk_lines`` lines — chunk ``b`` holds
lines ``b × chunk_lines + 1`` onwards — and, read by ``partitions``
partitions, chunk ``b`` is read by partition ``b mod partitions``. Every
partition reads the whole file, counting the lines of the chunks it skips
(``bytes`` per line and no parsing: a small part of the cost of the chunks it
parses), so it knows every line's number without talking to the others, and
the chunks of all partitions advance together: the step that puts a site's
records back in file order (:class:`flows.detect.ShardLogic`) holds only a
few chunks. Stdin is read by one partition. The chunks keep Bytewax's
per-item cost off the per-signal path.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from functools import partial
from itertools import chain, islice
from pathlib import Path
from typing import BinaryIO

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override

from schemas.lines import MAX_SIGNAL_LINE_BYTES

Line = tuple[int, bytes]
"""A 1-based line number and the line's bytes (without the newline)."""

LINE_STRIDE = 10**12
"""A Kafka record's line number is ``partition × LINE_STRIDE + offset`` (``3000000000042``: partition 3, offset 42)."""

DEFAULT_CHUNK_LINES = 10_000

READ_BUFFER = 1 << 20
"""The file's buffer, in bytes. Every partition reads the whole file a line at a time, its own chunks and the
lines it skips; with the default buffer (``st_blksize``, 4 KiB here) that was a ``read`` call per ~28 lines of the
scale bench. With 1 MiB, reading the 560k-line corpus took 66 ms of CPU instead of 88–94 ms in one partition, and
55–57 ms instead of 76–84 ms in each of two (min of 7, interleaved)."""


PIECES_AT_ONCE = 1000
"""Lines read before they are checked against the limit (:meth:`_LinesPartition._read_lines`)."""

OVERLONG_LINE = b"\0" * MAX_SIGNAL_LINE_BYTES
"""What stands for a line of :data:`schemas.lines.MAX_SIGNAL_LINE_BYTES` or more: one object for all of them, which
:func:`schemas.records.parse_lines` rejects for its length alone (NUL bytes: nothing strips them)."""


class _LinesPartition(StatefulSourcePartition[list[Line], int]):
    def __init__(self, stream: BinaryIO, chunk_lines: int, resume_line: int, index: int = 0, partitions: int = 1) -> None:
        self._stream = stream
        # readline with a limit: a line is never held whole past it (a file iterator reads any line whole).
        self._pieces = iter(partial(stream.readline, MAX_SIGNAL_LINE_BYTES), b"")
        self._chunk_lines = chunk_lines
        self._skip = chunk_lines * (partitions - 1)  # the lines of the other partitions' chunks between two of ours
        self._line = 0
        if resume_line:  # a snapshot is taken after a chunk and the skip behind it: the start of our next chunk
            self._skip_lines(resume_line)
        else:
            self._skip_lines(chunk_lines * index)

    def _skip_lines(self, count: int) -> None:
        self._line += len(self._read_lines(count))

    def _read_lines(self, count: int) -> list[bytes]:
        """The next ``count`` lines (fewer at the end), :data:`OVERLONG_LINE` for each one that long or longer.

        Read :data:`PIECES_AT_ONCE` at a time, so that a line with no end holds at most that many pieces before it
        is seen: 16 MiB, not the chunk's 160 MiB.
        """
        lines: list[bytes] = []
        while len(lines) < count:
            pieces = list(islice(self._pieces, min(count - len(lines), PIECES_AT_ONCE)))
            if not pieces:
                break
            lines += pieces if max(map(len, pieces)) < MAX_SIGNAL_LINE_BYTES else self._whole_lines(pieces)
        return lines

    def _whole_lines(self, pieces: list[bytes]) -> list[bytes]:
        """As many lines as ``pieces`` were read, starting with them: a line cut at the limit is read to its end and dropped."""
        lines: list[bytes] = []
        more = chain(pieces, self._pieces)
        for piece in more:
            if len(piece) == MAX_SIGNAL_LINE_BYTES and not piece.endswith(b"\n"):
                for rest in more:
                    if rest.endswith(b"\n"):
                        break
                piece = OVERLONG_LINE
            lines.append(piece)
            if len(lines) == len(pieces):
                break
        return lines

    @override
    def next_batch(self) -> Iterable[list[Line]]:
        raws = self._read_lines(self._chunk_lines)
        if not raws:
            raise StopIteration
        first = self._line + 1
        self._line += len(raws)
        chunk = list(zip(range(first, self._line + 1), raws, strict=True))
        if self._skip:
            self._skip_lines(self._skip)
        return [chunk]

    @override
    def snapshot(self) -> int:
        return self._line

    @override
    def close(self) -> None:
        if self._stream is not sys.stdin.buffer:
            self._stream.close()


class OneBatchPartition(StatefulSourcePartition[str, None]):
    """A partition that gives its items in one batch and ends (the flows that probe Bytewax: ``flows.cluster``)."""

    def __init__(self, items: list[str]) -> None:
        self.left = items

    @override
    def next_batch(self) -> list[str]:
        if not self.left:
            raise StopIteration
        sent, self.left = self.left, []
        return sent

    @override
    def snapshot(self) -> None:
        return None


def chunk_index(chunk: list[Line], chunk_lines: int) -> int:
    """Which chunk of the file this is (0-based), from its first line number."""
    return (chunk[0][0] - 1) // chunk_lines


class JsonLinesSource(FixedPartitionedSource[list[Line], int]):
    """Chunks of ``(line number, bytes)`` from a file path, or ``-`` for stdin (stdin or a pipe: one partition).

    ``partitions`` should be the cluster's worker count: Bytewax gives the
    partitions, in name order, to the workers in turn, so each worker reads one.
    """

    def __init__(self, path: str | Path, chunk_lines: int = DEFAULT_CHUNK_LINES, partitions: int = 1) -> None:
        self.path = str(path)
        self.chunk_lines = chunk_lines
        self.partitions = partitions if self.path != "-" and Path(self.path).is_file() else 1  # a pipe is read once

    @override
    def list_parts(self) -> list[str]:
        return [f"lines-{index:05d}" for index in range(self.partitions)]

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _LinesPartition:
        stream = sys.stdin.buffer if self.path == "-" else open(self.path, "rb", buffering=READ_BUFFER)  # noqa: SIM115 - closed by close()
        index = int(for_part.removeprefix("lines-"))
        return _LinesPartition(stream, self.chunk_lines, resume_state or 0, index, self.partitions)
