"""``PayloadChecks.raw_tenant``: a source that spills a tenant by reference tells the
tenant from the raw key and headers, without decoding. Whenever it answers, it must
answer what the decoded message would (else a tenant's messages would be spilled that
are not its own, or go live while it spills, and overtake their key)."""

from __future__ import annotations

import pytest

from connectors.kafka.headers import decode_record
from consumer_core.config.model import (
    ComponentSpec,
    PipelineConfig,
    TargetSpec,
    TenantFrom,
    TenantSpec,
)
from consumer_core.contracts import Delivery
from consumer_core.payload import DEFAULT_TENANT, PayloadChecks

CE = [("ce_id", b"e1"), ("ce_source", b"/t"), ("ce_type", b"t"), ("ce_specversion", b"1.0")]


def checks(tenant: TenantSpec | None) -> PayloadChecks:
    return PayloadChecks(
        PipelineConfig(
            name="p",
            source=ComponentSpec(type="kafka", options={}, path="pipelines[0].source"),
            target=TargetSpec(url="http://127.0.0.1:1/"),
            tenant=tenant,
        )
    )


def decoded_tenant(payload: PayloadChecks, key: bytes | None, headers: list) -> str:
    record = decode_record(topic="t", partition=0, offset=7, key=key, value=b"{}", headers=headers)
    assert record.event is not None
    delivery = Delivery(
        event=record.event, event_id=record.event_id, key=record.key, headers=record.headers
    )
    return payload.tenant(delivery, record.event)


HEADER = TenantSpec(source=TenantFrom.HEADER, name="X-Tenant")
CASES = [
    (HEADER, None, [("X-Tenant", b"acme")]),
    (HEADER, None, [("x-tenant", b"acme")]),  # names match ignoring case
    (HEADER, None, [("x-tenant", b"a"), ("X-Tenant", b"b")]),  # an exact match wins
    (HEADER, None, [("X-Tenant", b"a"), ("X-Tenant", b"b")]),  # the last value wins
    (HEADER, None, [("X-Tenant", b"")]),  # empty: the default tenant
    (HEADER, None, [("X-Tenant", b"a"), ("X-Tenant", b"")]),  # the last, empty, wins
    (HEADER, None, [("X-Tenant", None)]),  # a header without a value
    (HEADER, None, [("X-Tenant", b"\xffa")]),  # not UTF-8
    (HEADER, None, [("x-tenant", b"a"), ("X-Tenant", b"")]),  # exact but empty
    # no exact match: the first name that matches ignoring case, with its last value
    (HEADER, None, [("x-tenant", b"\xff"), ("X-TENANT", b"a")]),
    (HEADER, None, [("x-tenant", b"a"), ("X-TENANT", b"")]),
    (HEADER, None, [("x-tenant", b"a"), ("X-TENANT", b"b"), ("x-tenant", b"c")]),
    (HEADER, None, [*CE, ("ce_xtenant", b"globex")]),  # the CloudEvents attribute
    (HEADER, None, [*CE, ("ce_xtenant", b"globex"), ("X-Tenant", b"acme")]),
    (TenantSpec(source=TenantFrom.KEY), b"k-1", []),
    (TenantSpec(source=TenantFrom.KEY), b"", []),
    (None, b"k", [("X-Tenant", b"acme")]),
]


@pytest.mark.parametrize(("spec", "key", "headers"), CASES)
def test_raw_tenant_agrees_with_the_decoded_message(spec, key, headers):
    payload = checks(spec)
    raw = payload.raw_tenant(key, headers)
    assert raw is not None
    assert raw == decoded_tenant(payload, key, headers)


def test_raw_tenant_values():
    assert checks(HEADER).raw_tenant(None, [("x-tenant", b"acme")]) == "acme"
    assert checks(HEADER).raw_tenant(None, [("X-Tenant", b"")]) == DEFAULT_TENANT
    assert checks(None).raw_tenant(b"k", []) == DEFAULT_TENANT


@pytest.mark.parametrize(
    ("spec", "key", "headers"),
    [
        # not in a header: only the decoded event can tell (a structured event's attribute)
        (HEADER, None, [("content-type", b"application/cloudevents+json")]),
        (HEADER, None, None),
        # no key: the key may come from the event's partitionkey
        (TenantSpec(source=TenantFrom.KEY), None, []),
        # a key that is not UTF-8 is decoded to hex by the source
        (TenantSpec(source=TenantFrom.KEY), b"\xff\xfe", []),
        # a JSON path needs the payload
        (TenantSpec(source=TenantFrom.JSON, path="$.tenant"), b"k", [("X-Tenant", b"a")]),
    ],
)
def test_raw_tenant_says_when_it_cannot_tell(spec, key, headers):
    assert checks(spec).raw_tenant(key, headers) is None


@pytest.mark.parametrize(("spec", "key", "headers"), CASES)
def test_a_tenant_that_does_not_read_headers_answers_the_same_without_them(spec, key, headers):
    """A source skips building the headers when ``raw_tenant_reads_headers`` is false."""
    payload = checks(spec)
    if payload.raw_tenant_reads_headers:
        assert spec is not None
        assert spec.source is TenantFrom.HEADER
    else:
        assert payload.raw_tenant(key, None) == payload.raw_tenant(key, headers)
