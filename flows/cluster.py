"""The shape of a Bytewax cluster, and running a flow on it: one module for replay and detect.

A cluster is ``processes`` processes of ``workers`` worker threads each
(Bytewax's ``-a``/``-i``/``-w``): a flow's input partitions and keyed state
spread over all ``processes × workers`` workers, which exchange keyed items
over TCP. Threads share one interpreter (the GIL); processes are what use
more cores.

- ``--processes N`` on one host: the command becomes process 0 and starts
  processes 1…N-1 itself (:func:`start_local_cluster`) — the same command
  line plus ``--addresses`` (loopback ports it picked) and ``--process-id``.
  They die with it (``PR_SET_PDEATHSIG``), and when one of them ends
  otherwise than cleanly the whole cluster is stopped and the command fails.
- ``--addresses h1:p1,h2:p2,… --process-id I`` on several hosts: the user
  starts every process, with the same addresses (Bytewax's ``-a``/``-i``).

Process 0 is the **owner**: what must happen once — printing notifications,
rejected lines and totals, writing to an embedded chDB store (one process per
directory) — happens there, the other processes exchange those items to it
(:class:`sinks.callback.OwnerSink`, :class:`sinks.clickhouse.EpochStoreSink`).

This module imports no Bytewax (nor anything heavy) at the top: process 0
imports it to start the others, and the sooner they start, the sooner the
cluster runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from typing import TYPE_CHECKING, Any

from flows.placement import StatePlacement, bytewax_worker
from schemas.errors import Failure, UsageError

if TYPE_CHECKING:
    from bytewax.dataflow import Dataflow
    from bytewax.recovery import RecoveryConfig

STOP_GRACE_S = 5.0
"""How long process 0 waits for its own part to stop after another process failed, before it exits anyway."""


class ClusterError(Failure):
    """A process of the cluster ended otherwise than cleanly: the cluster is stopped (exit 1)."""


@dataclass(frozen=True)
class ClusterShape:
    """How many processes and workers run a flow, and which process this is."""

    processes: int = 1
    workers: int = 1  # per process
    addresses: tuple[str, ...] = ()  # every process's host:port, this one's included; () for one process
    process_id: int = 0

    @property
    def total_workers(self) -> int:
        """Workers in the whole cluster: the input partitions replay makes and the recovery partitions detect needs."""
        return self.processes * self.workers

    @property
    def owner(self) -> bool:
        """Whether this process is process 0, where output is gathered and an embedded store is written."""
        return self.process_id == 0

    @property
    def describe(self) -> str:
        """``2 processes × 1 worker`` (for messages)."""
        return f"{self.processes} process{'es' if self.processes != 1 else ''} × {self.workers} worker{'s' if self.workers != 1 else ''}"


def cluster_shape(workers: int, processes: int | None, addresses: str | None, process_id: int | None) -> ClusterShape:
    """The shape the options describe, or :class:`UsageError` saying what is inconsistent.

    ``--processes N`` alone: a local cluster this command starts (addresses
    are chosen later, by :func:`start_local_cluster`). ``--addresses`` (comma
    separated, every process's, in process-id order) with ``--process-id``:
    this process of a cluster someone else starts; ``--processes``, if given,
    must agree with the number of addresses.
    """
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if processes is not None and processes < 1:
        raise UsageError("--processes must be at least 1")
    if addresses is None:
        if process_id is not None:
            raise UsageError("--process-id needs --addresses (every process's host:port, in process-id order)")
        return ClusterShape(processes or 1, workers)
    listed = tuple(address.strip() for address in addresses.split(","))
    for address in listed:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--addresses: {address!r} is not host:port")
    if processes is not None and processes != len(listed):
        raise UsageError(f"--processes {processes} but --addresses lists {len(listed)} processes")
    if process_id is None or not 0 <= process_id < len(listed):
        raise UsageError(f"--addresses needs --process-id between 0 and {len(listed) - 1} (this process's position in the list)")
    return ClusterShape(len(listed), workers, listed if len(listed) > 1 else (), process_id)


def run_on(flow: Dataflow, shape: ClusterShape, epoch_interval: timedelta | None = None,
           recovery: RecoveryConfig | None = None, switch_interval: float | None = None) -> None:
    """Run ``flow`` as this process of ``shape`` (its addresses already known) until it ends.

    The engine keeps many small long-lived objects (windows, rings, one
    detector per site), so the cyclic garbage collector's default thresholds
    make it rescan them every few hundred allocations: the run raises them
    (measured: ~10% of replay's and of detect's time) and restores them afterwards.

    ``switch_interval`` (seconds), if given, is the interpreter's switch
    interval during the run. In a cluster, Bytewax's ``cluster_main`` waits
    for its worker threads by waking the calling thread every millisecond to
    check for signals, which takes the GIL from a worker each time: at the
    default 5 ms, over a thousand thread switches a second (measured: ~4% of
    a process's time on a 2-process replay). A longer interval costs as much
    latency to the other Python threads of the process, and to signals.
    """
    from bytewax.testing import cluster_main

    _keep_freed_buffers()
    thresholds, switch_interval_before = gc.get_threshold(), sys.getswitchinterval()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    try:
        with _stop_on_sigterm():
            if started_by_process_0():
                _await_listeners(shape.addresses[: shape.process_id])
            # Even one worker runs on a thread of its own (not ``run_main``): a signal is then handled on this thread,
            # between the worker's steps, and stops the flow cleanly, where ``run_main`` gets it inside a step and
            # panics (measured: the same time on a 560k-line replay, with the switch interval below).
            cluster_main(flow, list(shape.addresses), shape.process_id, epoch_interval=epoch_interval,
                         recovery_config=recovery, worker_count_per_proc=shape.workers)
    finally:
        sys.setswitchinterval(switch_interval_before)
        gc.set_threshold(*thresholds)
        gc.unfreeze()


MALLOC_MMAP_THRESHOLD = 4 << 20
"""Blocks up to this size (bytes) come from the heap, not from a mapping of their own (glibc's ``M_MMAP_THRESHOLD``)."""
MALLOC_TRIM_THRESHOLD = 64 << 20
"""Freed memory at the top of a heap is kept up to this size (bytes) before it is returned (``M_TRIM_THRESHOLD``)."""


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the flow as SIGINT does: Bytewax checks for signals between steps and stops every worker.

    In a cluster every process must stop that way: one ended by the signal's default action leaves its peers'
    connections without Bytewax's goodbye, and their receiving threads panic (a traceback or an abort where
    ``logystera: interrupted`` belongs). A handler already there runs first: a local cluster's passes the signal
    on to the other processes.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def interrupt(signum: int, frame: Any) -> None:
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _keep_freed_buffers() -> None:
    """Have glibc reuse large freed blocks (:data:`MALLOC_MMAP_THRESHOLD`, :data:`MALLOC_TRIM_THRESHOLD`); elsewhere nothing.

    A cluster process pickles every chunk part it sends to another (~1 MB
    of lines) and reads every one it receives into fresh buffers (Bytewax's,
    Timely's, pickle's). Above glibc's default threshold (128 KiB, raised
    only as such blocks are freed) each was a mapping of its own, faulted in
    page by page and unmapped again. Measured on a 2-process replay of the
    scale bench: 123k → 70k page faults and 0.35–0.5 s less CPU (of ~11 s).
    What this keeps is bounded: at most the trim threshold of freed memory
    per malloc arena (one per thread that allocates).
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>


def _await_listeners(addresses: Sequence[str]) -> None:
    """Return once something listens on the port of each of ``addresses`` (the lower processes of a local cluster).

    Bytewax (Timely) connects to every process of a lower id, and one that
    does not listen yet costs a whole second: it sleeps 1 s before trying
    again. The processes of a local cluster start together and take about
    as long to get ready, so each process waits here, for a few
    milliseconds at a time, until the lower ones listen. Only the table of
    listening sockets is read: a test connection would be taken for a peer.
    Where there is no such table (not Linux), Bytewax's retries remain.
    """
    ports = {int(address.rpartition(":")[2]) for address in addresses}
    delay = 0.002
    while True:
        listening = _listening_ports()
        if listening is None or ports <= listening:
            return
        time.sleep(delay)
        delay = min(2 * delay, 0.02)


def _listening_ports() -> set[int] | None:
    """The local IPv4 TCP ports some socket listens on (Linux's ``/proc/net/tcp``); None where it cannot be read."""
    try:
        with open("/proc/net/tcp", encoding="ascii") as table:
            rows = [line.split() for line in table.readlines()[1:]]
    except OSError:
        return None
    return {int(row[1].rpartition(":")[2], 16) for row in rows if row[3] == "0A"}  # 0A: TCP_LISTEN


def _free_loopback_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (all bound at once, so they differ)."""
    import socket

    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the process that started it dies (Linux; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


STARTED_BY_PROCESS_0 = "LOGYSTERA_STARTED_BY_PROCESS_0"
"""Set to its process id in the environment of the processes that process 0 of a local cluster starts."""


def started_by_process_0() -> bool:
    """Whether this process is one that process 0 of a local cluster started (its parent, named in the environment)."""
    return os.environ.get(STARTED_BY_PROCESS_0) == str(os.getppid())


@dataclass
class LocalCluster:
    """The cluster as this process runs in it: its shape (this process's), and the processes it started, if any."""

    shape: ClusterShape
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def checked(self) -> None:
        """Tell the processes this one started that it found no mistake in its arguments: they may report their own.

        Until then they hold back a mistake they find (:func:`wait_for_process_0`): the same command
        line and files give every process the same mistake, and this process reports it, once. The
        signal is the end of their standard input.
        """
        for child in self.children:
            if child.stdin is not None:
                child.stdin.close()


def wait_for_process_0() -> None:
    """Before a process that process 0 of a local cluster started reports an error: wait until process 0 has checked.

    If process 0 finds the mistake too (it always does, unless a file changed in between), it
    reports it and kills this process here; otherwise this returns and the mistake is this
    process's own, to report. Anywhere else it returns at once.
    """
    if started_by_process_0():
        sys.stdin.buffer.read()  # until its end: :meth:`LocalCluster.checked`


@contextlib.contextmanager
def start_local_cluster(shape: ClusterShape, argv: Sequence[str]) -> Iterator[LocalCluster]:
    """Start processes 1…N-1 of a local cluster running ``logystera argv`` now; yield the cluster (process 0 of it).

    Enter it as soon as the shape is known, before the heavy imports and the
    checks of the arguments: the other processes start at once and import
    while this one does (each takes ~0.3 s of CPU to be ready). Call
    :meth:`LocalCluster.checked` once the arguments are checked; leaving the
    block with an error before that kills the others, which held back the
    same error (:func:`wait_for_process_0`), so it is reported once.

    The children's output goes to stderr. SIGINT and SIGTERM received here
    are passed on to them. If a child ends with a failure (or is killed)
    while the cluster runs, the others are killed and :class:`ClusterError`
    is raised here once this process's part has stopped — Bytewax itself
    stops a process whose peer disappears. Leaving the block waits for every
    child. A single process, or one of a cluster started by hand
    (``--addresses``), starts nothing.
    """
    if shape.processes == 1 or shape.addresses:
        yield LocalCluster(shape)
        return
    addresses = tuple(f"127.0.0.1:{port}" for port in _free_loopback_ports(shape.processes))
    command = [sys.executable, "-m", "cli.main", *argv, "--addresses", ",".join(addresses)]
    children = [
        # Bytewax writes its messages to stdout: a child's goes to stderr, as its stderr, never into the output.
        subprocess.Popen([*command, "--process-id", str(index)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,  # noqa: S603
                         stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, env={**os.environ, STARTED_BY_PROCESS_0: str(os.getpid())})
        for index in range(1, shape.processes)
    ]
    cluster = LocalCluster(ClusterShape(shape.processes, shape.workers, addresses, 0), children)
    forwarders = [threading.Thread(target=_forward_output, args=(child,), daemon=True) for child in children]
    for forwarder in forwarders:
        forwarder.start()
    failed: list[str] = []

    def watch(child: subprocess.Popen[bytes], index: int) -> None:
        code = child.wait()
        if code != 0 and not stopping.is_set() and not requested.is_set():
            failed.append(f"process {index} of the cluster ended with {_exit_status(code)}: the cluster is stopped")
            stopping.set()
            for other in children:
                if other.poll() is None:
                    other.kill()
            os.kill(os.getpid(), signal.SIGTERM)  # this process's part stops between two steps, if it can
            if not finished.wait(STOP_GRACE_S):
                # Its workers wait on the dead peer and never reach a step: end as the peer did. Recovery resumes
                # from the last completed epoch, exactly as after a kill -9 of this process.
                sys.stderr.write(f"logystera: error: {failed[0]}\n")
                sys.stderr.flush()
                os._exit(1)

    stopping = threading.Event()
    requested = threading.Event()  # a stop was asked here (SIGINT/SIGTERM): how the others then end is no failure
    finished = threading.Event()  # this process's part has stopped
    forwarded = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

    def forward(signum: int, frame: Any) -> None:
        signum = signal.Signals(signum)
        if not failed:
            requested.set()  # a child still starting may die of the signal rather than stop: that is the stop asked
            for child in children:
                if child.poll() is None:
                    child.send_signal(signum)
        previous = forwarded[signum]
        if callable(previous):
            previous(signum, frame)
        else:
            raise KeyboardInterrupt

    for signum in forwarded:
        signal.signal(signum, forward)
    for index, child in enumerate(children, 1):  # once a SIGTERM from a watcher is taken for a stop, not a kill
        threading.Thread(target=watch, args=(child, index), daemon=True).start()
    try:
        yield cluster
        cluster.checked()  # a block that ran to its end found no mistake (and a child must not wait for ever)
    except BaseException:
        # This process's part stopped early: because a child failed (Bytewax stops a process whose peer is gone), or
        # by itself — a mistake in its arguments included (then the children are stopped too, before the end of
        # their input would let them report the same mistake).
        ended = [(index, child.poll()) for index, child in enumerate(children, 1)]
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.kill()
        failed.extend(f"process {index} of the cluster ended with {_exit_status(code)}: the cluster is stopped"
                      for index, code in ended if code not in (None, 0) and not requested.is_set())
        if failed:
            raise ClusterError(failed[0]) from None
        raise
    finally:
        finished.set()
        for signum, previous in forwarded.items():
            signal.signal(signum, previous)
        for child in children:
            child.wait()
        cluster.checked()  # closes what is left open, now that every child has ended
        for forwarder in forwarders:
            forwarder.join()
    if failed:
        raise ClusterError(failed[0])


def _forward_output(child: subprocess.Popen[bytes]) -> None:
    """Pass a child's output on to stderr, without Bytewax's lines about a peer not listening yet (it retries)."""
    assert child.stdout is not None
    for line in child.stdout:
        if not _RETRYING.search(line):
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()


_RETRYING = re.compile(rb"error connecting to worker \d+: .*; retrying$")


def _exit_status(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


def site_shard(site: str, shards: int) -> int:
    """The shard (0…shards-1) a site's detector lives in: stable across processes and runs (not Python's ``hash``)."""
    return zlib.crc32(site.encode("utf-8")) % shards


@cache
def shard_keys(workers: int) -> tuple[str, ...]:
    """For each worker index, a Bytewax state key that lives on that worker: one shard per worker, none idle.

    Bytewax routes a key to ``hash(key) mod workers``, so with keys
    ``"0"…"N-1"`` some workers would hold two shards and others none. The
    routing depends only on the key and the total worker count
    (:func:`flows.placement.bytewax_worker`, checked against Bytewax), so
    each worker gets the first key ``"0"``, ``"1"``, … routed to it — the same
    in every process of the cluster.
    """
    found: dict[int, str] = {}
    for number in itertools.count():
        found.setdefault(bytewax_worker(str(number), workers), str(number))
        if len(found) == workers:
            return tuple(found[worker] for worker in range(workers))
    raise AssertionError("unreachable")  # itertools.count() never ends


@cache
def partition_workers(parts: tuple[str, ...], workers: int) -> dict[str, int]:
    """The worker Bytewax gives each input partition of a source that lists ``parts`` on every worker.

    Bytewax assigns them (``calc_primaries``: the least-loaded worker, in
    the partitions' name order, ties by an order of its own) from the names
    and the total worker count only, so a throw-away flow of ``workers``
    threads here reads each partition on the worker the cluster will read it
    on — the same answer in every process (:mod:`flows.placement`).
    """
    if workers == 1:
        return dict.fromkeys(parts, 0)
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.inputs import FixedPartitionedSource
    from bytewax.testing import cluster_main

    from flows.sources import OneBatchPartition

    class Names(FixedPartitionedSource[str, None]):
        def list_parts(self) -> list[str]:
            return list(parts)

        def build_part(self, step_id: str, for_part: str, resume_state: None) -> OneBatchPartition:
            return OneBatchPartition([for_part])

    found: dict[str, int] = {}
    lock = threading.Lock()

    def where(step_id: str, item: str, epoch: int, worker: int) -> None:
        with lock:
            found[item] = worker

    flow = Dataflow("logystera_partition_probe")
    op.inspect_debug("where", op.input("parts", flow, Names()), where)
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return found


def state_placement(topic: str, partitions: int, workers: int) -> StatePlacement:
    """The :class:`StatePlacement` of the live flow reading ``topic``'s ``partitions`` with ``workers`` in all."""
    names = tuple(f"{index}-{topic}" for index in range(partitions))  # Bytewax's KafkaSource's names of them
    readers = partition_workers(names, workers)
    return StatePlacement(tuple(readers[name] for name in names), workers)
