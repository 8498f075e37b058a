"""The partition the Kafka sink picks for a key (connectors/kafka.py: the murmur2 hash memoised
per key, into the sorted partition ids) is exactly the one kafka-python's DefaultPartitioner
picks, for any partition count."""

from __future__ import annotations

import uuid

from kafka.partitioner.default import DefaultPartitioner

from connectors.kafka import key_hash


class Partitions:
    """The three questions DefaultPartitioner.partition asks of the client's cluster metadata."""

    def __init__(self, topic: str, ids: set[int]) -> None:
        self.topic, self.ids = topic, ids

    def topics(self) -> set[str]:
        return {self.topic}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(self.ids)

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return set(self.ids)


def test_memoised_partition_equals_kafka_pythons_default_partitioner() -> None:
    partitioner = DefaultPartitioner()
    keys = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"customer-{i}")).encode() for i in range(500)]
    keys += [b"", b"a", b"ab", b"abc", b"abcd", b"abcde", "clé-ü".encode(), bytes(range(256))]
    id_sets = [set(range(n)) for n in (1, 2, 3, 5, 6, 7, 12, 16, 31, 64, 100)] + [{7, 3, 1}, {10, 2, 5, 0}]
    for ids in id_sets:
        cluster = Partitions("cs.events", ids)
        partitions = sorted(ids)
        for key in keys:
            expected = partitioner.partition("cs.events", None, key, None, None, cluster)
            for _ in range(2):  # computed, then from the memo
                assert partitions[key_hash(key) % len(partitions)] == expected, (key, ids)
    assert key_hash.cache_info().hits > 0
