"""Tenant A's flood for ``bench.isolation``, from a process of its own.

    python -m bench.flood_producer BOOTSTRAP TOPIC COUNT

Produces ``COUNT`` messages of tenant A (100 keys) as fast as the client takes them,
then prints one JSON object: ``{"sent": {id: send time}, "refused": {id: reason}}``.
A flooding tenant's messages come from its own clients; in the scenario runner's
process, this loop would hold the interpreter while the runner stamps the other
tenants' results as they arrive, and that delay would be counted against the bridge.
"""

from __future__ import annotations

import json
import sys

from bench.isolation import Feed


def main() -> None:
    bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    feed = Feed(bootstrap, topic)
    sys.stdin.readline()  # "go": the scenario has started
    feed.send("A", count, keys=100)
    feed.flush()
    print(json.dumps({"sent": feed.sent, "refused": feed.refused}))


if __name__ == "__main__":
    main()
