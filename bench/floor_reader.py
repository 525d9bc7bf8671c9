"""The broker's own latency under a scenario: a plain consumer, no bridge.

    python -m bench.floor_reader BOOTSTRAP TOPIC PARTITIONS

Assigns every partition of ``TOPIC`` from the beginning (no group, no commits) and
notes when each record arrived, by its ``ce_id`` header. It says ``ready`` once the
first record arrived (the scenario's warm-up message), so that its own start-up is not
counted against the broker. When a line arrives on stdin
it prints one JSON object ``{ce_id: arrival time (epoch s)}`` and exits. Run in its own
process beside a scenario, it shows how long a record takes just to become readable:
the floor under anything that consumes the topic, the bridge included.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def main() -> None:
    bootstrap, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "floor-reader",  # required by librdkafka; never joined or committed
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "fetch.queue.backoff.ms": 5,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    arrived: dict[str, float] = {}
    stop = threading.Event()

    def stop_on_input() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=stop_on_input, daemon=True).start()
    ready = False
    while not stop.is_set():
        # consume(n, timeout) waits for n records or the timeout: take what is there,
        # else wait for one
        messages = consumer.consume(10_000, 0) or consumer.consume(1, 0.05)
        now = time.time()
        if messages and not ready:
            ready = True
            print("ready", flush=True)
        for m in messages:
            if m.error() is None:
                headers = m.headers() or []
                pairs = headers.items() if isinstance(headers, dict) else headers
                for name, value in pairs:
                    if name == "ce_id" and isinstance(value, bytes):
                        arrived.setdefault(value.decode(), now)
    consumer.close()
    print(json.dumps(arrived), flush=True)


if __name__ == "__main__":
    main()
