"""Each site's state on the worker that reads its partition (flows/placement.py), checked against Bytewax and Kafka themselves."""

from __future__ import annotations

import threading
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource
from bytewax.testing import TestingSource, cluster_main
from confluent_kafka import Producer

from flows.cluster import partition_workers, state_placement
from flows.placement import SiteKeys, StatePlacement, bytewax_worker, kafka_partition, murmur2
from flows.sources import OneBatchPartition
from sinks.kafka_client import producer_config
from tests.flows.test_live_kafka import produce
from tests.support.kafka_broker import Broker, unique_topic

SITES = [f"site-{index}.example" for index in range(200)] + ["a", "0", "x" * 63, "abcdefg", "abcdefgh", "abcdefghi", "b.c-d_e"]


def _where_bytewax_keeps(keys: list[str], workers: int) -> dict[str, int]:
    """The worker a real Bytewax keyed step of ``workers`` workers holds each key's state on."""
    found: dict[str, int] = {}
    lock = threading.Lock()

    def where(step_id: str, item: tuple[str, Any], epoch: int, worker: int) -> None:
        with lock:
            found[item[0]] = worker

    flow = Dataflow("placement_probe")
    keyed = op.input("keys", flow, TestingSource([(key, None) for key in keys]))
    op.inspect_debug("where", op.stateful_map("state", keyed, lambda state, value: (None, value)), where)
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return found


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_the_worker_of_a_state_key_is_the_one_bytewax_uses(workers: int) -> None:
    keys = [*SITES, "é-not-a-site", "", "site#7"]
    found = _where_bytewax_keeps(keys, workers)
    assert {key: bytewax_worker(key, workers) for key in keys} == found
    assert len(set(found.values())) == workers  # the keys do spread: the check above is not trivially one worker


def test_murmur2_is_kafkas() -> None:
    # Kafka's own test vectors (clients' UtilsTest), as signed Java ints.
    vectors = {"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536,
               "a-little-bit-longer-string": -1486304829, "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
               "abc": 479470107}
    assert {key: murmur2(key.encode()) - (1 << 32 if murmur2(key.encode()) >= 1 << 31 else 0) for key in vectors} == vectors


@pytest.mark.broker
def test_a_site_is_in_the_partition_the_gateways_producer_writes_it_to(broker: Broker) -> None:
    topic = unique_topic("signals")
    broker.create_topics([topic], partitions=5)
    producer = Producer(producer_config(broker.bootstrap))  # the gateway's settings: murmur2 by site
    positions = produce(producer, topic, [(site.encode(), b"{}") for site in SITES])
    assert [partition for partition, _ in positions] == [kafka_partition(site.encode(), 5) for site in SITES]
    assert len({partition for partition, _ in positions}) == 5


class _Partitions(FixedPartitionedSource[str, None]):
    """Partitions named as Bytewax's KafkaSource names them, each holding the sites murmur2 puts in it."""

    def __init__(self, topic: str, partitions: int) -> None:
        self.topic, self.partitions = topic, partitions

    def list_parts(self) -> list[str]:
        return [f"{index}-{self.topic}" for index in range(self.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> OneBatchPartition:
        index = int(for_part.split("-", 1)[0])
        return OneBatchPartition([site for site in SITES if kafka_partition(site.encode(), self.partitions) == index])


@pytest.mark.parametrize(("partitions", "workers"), [(4, 2), (5, 2), (12, 3), (3, 4)])
def test_each_sites_state_is_kept_on_the_worker_that_reads_its_partition(partitions: int, workers: int) -> None:
    placement = state_placement("signals", partitions, workers)
    keys = SiteKeys(placement)
    read: dict[str, int] = {}
    kept: dict[str, int] = {}
    lock = threading.Lock()

    def on(seen: dict[str, int]) -> Any:
        def record(step_id: str, item: Any, epoch: int, worker: int) -> None:
            with lock:
                seen[item if isinstance(item, str) else item[1]] = worker
        return record

    flow = Dataflow("placement_check")
    sites = op.input("sites", flow, _Partitions("signals", partitions))
    op.inspect_debug("read", sites, on(read))
    state = op.stateful_map("state", op.key_on("key", sites, lambda site: keys(site.encode())), lambda state, site: (None, site))
    op.inspect_debug("kept", state, on(kept))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert len(read) == len(SITES) and kept == read
    if workers <= partitions:
        assert len(set(read.values())) == workers  # every worker reads a partition and keeps its sites
    assert placement.partition_workers == tuple(partition_workers(tuple(f"{i}-signals" for i in range(partitions)), workers)[f"{i}-signals"]
                                                for i in range(partitions))


def test_one_worker_keys_every_site_by_itself_and_a_salted_key_never_names_another_site() -> None:
    assert [StatePlacement((0, 0, 0), 1).key(site) for site in SITES] == SITES
    placement = state_placement("signals", 4, 2)
    keys = [placement.key(site) for site in SITES]
    assert len(set(keys)) == len(SITES)
    salted = [key for key in keys if "#" in key]
    assert salted and all(key.split("#")[0] in SITES for key in salted)  # '#' is not a site character


def test_site_keys_remember_a_bounded_number_of_sites() -> None:
    placement = state_placement("signals", 4, 2)
    keys = SiteKeys(placement, limit=3)
    assert [keys(site.encode()) for site in SITES[:10]] == [placement.key(site) for site in SITES[:10]]
    assert len(keys.known) == 3
    assert [keys(site.encode()) for site in SITES[:10]] == [placement.key(site) for site in SITES[:10]]  # the same, remembered or not
    assert SiteKeys(None)(b"site-1.example") == "site-1.example"
