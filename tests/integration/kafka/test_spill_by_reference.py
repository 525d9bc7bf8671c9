"""Spilling by reference on a real broker: the source hands a spilling tenant's
messages over undecoded, as references, commits past them once acked, and reads them
back by reference later (``isolation.spill_by_reference``)."""

from __future__ import annotations

import asyncio
import json

import pytest

from connectors.kafka.reread import parse_reference, reference
from connectors.kafka.source import KafkaSource, consumer_config
from consumer_core.contracts import Delivery
from tests.integration.kafka.tansu import TEST_CONSUMER_SETTINGS, Tansu

pytestmark = pytest.mark.kafka


def record(n: int, tenant: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    headers = [
        ("ce_id", f"m{n}".encode()),
        ("ce_source", b"/test"),
        ("ce_type", b"order"),
        ("ce_specversion", b"1.0"),
        ("content-type", b"application/json"),
        ("x-tenant", tenant.encode()),
    ]
    return f"{tenant}-k".encode(), json.dumps({"n": n}).encode(), headers


def raw_tenant(key, headers):
    for name, value in headers or ():
        if name == "x-tenant":
            return value.decode()
    return None


def source_for(tansu: Tansu, topic: str) -> KafkaSource:
    config = consumer_config(
        bootstrap_servers=tansu.bootstrap,
        group_id=tansu.unique("g"),
        client_id="test",
        settings=TEST_CONSUMER_SETTINGS,
    )
    return KafkaSource(pipeline="p", config=config, topics=[topic], commit_interval=0.2)


async def receive_all(source: KafkaSource, n: int) -> list[Delivery]:
    got: list[Delivery] = []
    async with asyncio.timeout(60):
        while len(got) < n:
            got.extend(await source.receive(100, 0.5))
    return got


def test_references_name_a_partition_and_offset():
    assert reference("orders.v1", 3, 42) == "orders.v1/3/42"
    assert parse_reference("orders.v1/3/42") == (("orders.v1", 3), 42)


async def test_a_spilling_tenants_messages_come_as_references_and_read_back(tansu: Tansu):
    topic = tansu.create_topic(tansu.unique("spill"), 1)
    tenants = ["A", "B", "A", "A", "B", "A"]
    await asyncio.to_thread(tansu.produce, topic, [record(n, t) for n, t in enumerate(tenants)])
    source = source_for(tansu, topic)
    spilling = {"A"}
    source.spill_by_reference(spilling, raw_tenant)
    await source.connect()
    try:
        got = await receive_all(source, len(tenants))
        # A's messages are not decoded: a reference and a tenant, no event
        for n, delivery in enumerate(got):
            if tenants[n] == "A":
                assert delivery.event is None
                assert delivery.tenant == "A"
                assert delivery.reference == f"{topic}/0/{n}"
            else:
                assert delivery.reference is None
                assert delivery.event is not None
                assert delivery.event.get_id() == f"m{n}"
        # acking a reference means it is stored: the commit passes it
        for delivery in got:
            await delivery.ack()
        await source.commit()
        committed = await asyncio.to_thread(tansu.committed, source.group_id, topic, 1)
        assert committed == {0: len(tenants)}

        # read back later, decoded, by reference; one past the end is reported missing
        wanted = [d.reference for d in got if d.reference] + [f"{topic}/0/99"]
        back = await source.reread(wanted)
        assert sorted(back) == sorted(wanted[:-1])
        for ref, message in back.items():
            n = parse_reference(ref)[1]
            assert message.event is not None
            assert message.event.get_id() == f"m{n}"
            assert json.loads(message.raw) == {"n": n}
            assert message.key == "A-k"
            assert message.headers["x-tenant"] == "A"
        # reading back again (the rows were not deleted yet after a restart) works too
        again = await source.reread(wanted[:1])
        assert list(again) == wanted[:1]
    finally:
        await source.close()


async def test_a_tenant_that_stops_spilling_is_decoded_again(tansu: Tansu):
    topic = tansu.create_topic(tansu.unique("spill"), 1)
    await asyncio.to_thread(tansu.produce, topic, [record(n, "A") for n in range(4)])
    source = source_for(tansu, topic)
    spilling: set[str] = set()  # the core's live set: nobody spills yet
    source.spill_by_reference(spilling, raw_tenant)
    await source.connect()
    got: list[Delivery] = []
    more: list[Delivery] = []
    try:
        got = await receive_all(source, 4)
        assert all(d.reference is None and d.event is not None for d in got)
        spilling.add("A")
        await asyncio.to_thread(tansu.produce, topic, [record(n, "A") for n in range(4, 6)])
        more = await receive_all(source, 2)
        assert [d.reference for d in more] == [f"{topic}/0/4", f"{topic}/0/5"]
    finally:
        for delivery in got + more:
            await delivery.ack()
        await source.close()
