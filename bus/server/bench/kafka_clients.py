"""Kafka-door throughput with a real Kafka client (confluent-kafka, which
bundles librdkafka), next to `edgebus bench` on the same broker.

    python bus/server/bench/kafka_clients.py produce --bootstrap 127.0.0.1:9092 \
        --records 200000 --size 1024
    python bus/server/bench/kafka_clients.py fetch --bootstrap 127.0.0.1:9092 \
        --records 200000 --size 1024

`produce` creates a fresh one-partition topic and sends --records values of
--size bytes with acks=-1 and linger.ms=5, timing from the first send to the
last acknowledgement. `fetch` fills a fresh topic first (untimed), then times
one consumer reading it all from offset 0. Both print one JSON object;
MB/s counts 10^6 bytes of record value, as `edgebus bench` does.
"""
import argparse
import json
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def fresh_topic(bootstrap):
    name = "bench-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)]).values():
        f.result(timeout=10)
    return admin, name


def produce(bootstrap, topic, records, size, linger_ms):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "-1", "linger.ms": linger_ms})
    value = b"x" * size
    errors = []

    def done(err, _msg):
        if err:
            errors.append(str(err))

    start = time.perf_counter()
    for _ in range(records):
        while True:
            try:
                p.produce(topic, value, on_delivery=done)
                break
            except BufferError:
                p.poll(0.001)
        p.poll(0)
    left = p.flush(120)
    elapsed = time.perf_counter() - start
    if errors or left:
        raise SystemExit(f"{len(errors)} errors ({errors[:3]}), {left} unacknowledged")
    return elapsed


def fetch(bootstrap, topic, records):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-" + topic,
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    got = 0
    start = time.perf_counter()
    while got < records:
        for m in c.consume(num_messages=10000, timeout=1.0):
            if not m.error():
                got += 1
    elapsed = time.perf_counter() - start
    c.close()
    return elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["produce", "fetch"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--linger-ms", type=int, default=5)
    a = ap.parse_args()
    admin, topic = fresh_topic(a.bootstrap)
    try:
        if a.what == "produce":
            elapsed = produce(a.bootstrap, topic, a.records, a.size, a.linger_ms)
        else:
            produce(a.bootstrap, topic, a.records, a.size, a.linger_ms)
            elapsed = fetch(a.bootstrap, topic, a.records)
    finally:
        for f in admin.delete_topics([topic]).values():
            f.result(timeout=10)
    print(json.dumps({
        "what": a.what, "records": a.records, "size": a.size,
        "seconds": round(elapsed, 3),
        "records_per_s": round(a.records / elapsed),
        "mb_per_s": round(a.records * a.size / elapsed / 1e6, 1),
    }))


if __name__ == "__main__":
    main()
