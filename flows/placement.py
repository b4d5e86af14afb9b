"""Where the live flow keeps a site's detector: on the worker that reads the site's Kafka partition.

Bytewax places a state key on worker ``hash(key) mod workers`` (Rust's
``DefaultHasher``, SipHash-1-3 with zero keys, over the key's bytes and
``0xff``), whatever worker read the record. Keyed by its site, a site's
state lands on a worker picked by that hash, so with two processes half of
every partition's lines crossed to the other process (pickled, sent,
unpickled), and the detection work was as uneven as the hash made it (676k
against 724k lines on the scale bench, while reading was 698k/702k).

The gateway writes a site's signals with the site as the Kafka key and
Kafka's ``murmur2`` partitioner, so all of a site's records are in one
partition, and Bytewax gives each partition to one worker
(:func:`flows.cluster.partition_workers`). :class:`StatePlacement` finds
for each site a state key that Bytewax places on that worker: the site
itself when the hash already sends it there, else ``site#n`` for the first
``n`` that does (``#`` is not a site character, so keys never collide).
Then nothing but outputs crosses between processes. A record that is not in
its site's partition (a producer that keys otherwise) still reaches its
site's state: the key depends on the site alone; it just crosses.

The key depends on the total worker count and the partition count: a
recovery directory records both and refuses a start that changes either
(:func:`flows.live.prepare_recovery`). One worker needs no salt: every key
is on worker 0, and the keys are the sites, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.records import KNOWN_SITES_LIMIT

_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1

SALT_TRIES = 1024
"""How many ``site#n`` a site's key is looked for in; past that (odds 2^-1024 for two workers) the site itself: correct, only not local."""


def _rotl(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (64 - bits))) & _MASK64


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with the key (0, 0): Rust's ``std::collections::hash_map::DefaultHasher::new()``."""
    v0, v1, v2, v3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573

    def sip_round() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _MASK64
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK64
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK64
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK64
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    length = len(data)
    whole = length - length % 8
    for start in range(0, whole, 8):
        word = int.from_bytes(data[start:start + 8], "little")
        v3 ^= word
        sip_round()
        v0 ^= word
    last = ((length & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= last
    sip_round()
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        sip_round()
    return v0 ^ v1 ^ v2 ^ v3


def bytewax_worker(key: str, workers: int) -> int:
    """The worker (0…workers-1) Bytewax 0.21's keyed steps give the state key ``key`` (``str``'s ``Hash``: its bytes, then ``0xff``)."""
    return siphash13(key.encode("utf-8") + b"\xff") % workers


def murmur2(data: bytes) -> int:
    """Kafka's ``murmur2`` (the Java clients' and librdkafka's ``murmur2_random`` partitioner), as an unsigned 32-bit value."""
    multiplier, length = 0x5BD1E995, len(data)
    value = 0x9747B28C ^ length
    whole = length - length % 4
    for start in range(0, whole, 4):
        word = (int.from_bytes(data[start:start + 4], "little") * multiplier) & _MASK32
        word = ((word ^ (word >> 24)) * multiplier) & _MASK32
        value = ((value * multiplier) & _MASK32) ^ word
    tail = data[whole:]
    if tail:
        value ^= int.from_bytes(tail, "little")
        value = (value * multiplier) & _MASK32
    value = ((value ^ (value >> 13)) * multiplier) & _MASK32
    return value ^ (value >> 15)


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's ``murmur2`` partitioner writes a record with this key to."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class StatePlacement:
    """Which worker reads each partition of the input topic (index: partition number), of how many."""

    partition_workers: tuple[int, ...]
    workers: int

    def key(self, site: str) -> str:
        """The state key of ``site``'s detector: one Bytewax places on the worker reading the site's partition."""
        if self.workers == 1:
            return site
        target = self.partition_workers[kafka_partition(site.encode("utf-8"), len(self.partition_workers))]
        candidate = site
        for salt in range(1, SALT_TRIES):
            if bytewax_worker(candidate, self.workers) == target:
                return candidate
            candidate = f"{site}#{salt}"
        return site


@dataclass
class SiteKeys:
    """Each site's state key in the live flow: by ``placement``, or the site itself (None: a recovery directory keyed so).

    A reader sees the same few sites again and again: it remembers up to
    ``limit`` of them (a key costs a few SipHash rounds per try); past that
    a key is found anew each time, so a flood of invented sites costs time
    per line, bounded, and no memory.
    """

    placement: StatePlacement | None
    limit: int = KNOWN_SITES_LIMIT
    known: dict[bytes, str] = field(default_factory=dict)

    def __call__(self, site: bytes) -> str:
        """The state key of the site named by these bytes (a value of the site pattern)."""
        key = self.known.get(site)
        if key is None:
            text = site.decode()
            key = text if self.placement is None else self.placement.key(text)
            if len(self.known) < self.limit:
                self.known[site] = key
        return key
