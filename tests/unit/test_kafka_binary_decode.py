"""Binary-mode Kafka records are read by hand when they are plainly valid CloudEvents
1.0: the attributes must be the SDK binding's, and whatever the SDK refuses (or reads
with another spec version) must be left to it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from cloudevents.core.bindings import kafka as ce_kafka

from connectors.kafka.headers import binary_attributes
from consumer_core.events import JSON_FORMAT

BASE = {"ce_id": b"e-1", "ce_source": b"/shop", "ce_type": b"order", "ce_specversion": b"1.0"}

VALID: list[tuple[dict[str, bytes], str | None]] = [
    (BASE, None),
    (BASE, "cust-7"),
    ({**BASE, "content-type": b"application/json", "x-tenant": b"acme"}, "k"),
    ({**BASE, "ce_time": b"2024-05-01T12:00:00Z", "ce_subject": b"s"}, None),
    ({**BASE, "ce_time": b"2024-05-01T12:00:00.123456+02:00"}, None),
    ({**BASE, "ce_dataschema": b"https://x/s", "ce_region": b"eu", "ce_n2": b"\xc3\xa9"}, None),
    ({"CE_ID": b"e-2", "Ce_Source": b"/s", "ce_TYPE": b"t", "ce_specversion": b"1.0"}, None),
    ({k: v for k, v in BASE.items() if k != "ce_specversion"}, None),  # 1.0 by default
    ({k: v for k, v in BASE.items() if k != "ce_id"}, None),  # the SDK makes an id
]

REFUSED_OR_OTHER: list[tuple[dict[str, bytes], str | None]] = [
    ({**BASE, "ce_specversion": b"0.3"}, None),  # another spec version: the SDK's
    ({**BASE, "ce_specversion": b"2.0"}, None),
    ({**BASE, "ce_id": b""}, None),
    ({k: v for k, v in BASE.items() if k != "ce_source"}, None),
    ({k: v for k, v in BASE.items() if k != "ce_type"}, None),
    ({**BASE, "ce_time": b"yesterday"}, None),
    ({**BASE, "ce_time": b"2024-05-01T12:00:00"}, None),  # no time zone
    ({**BASE, "ce_subject": b""}, None),
    ({**BASE, "content-type": b""}, None),
    ({**BASE, "ce_dataschema": b""}, None),
    ({**BASE, "ce_data": b"x"}, None),
    ({**BASE, "ce_bad-name": b"x"}, None),
    ({**BASE, "ce_": b"x"}, None),
    ({**BASE, "x-other": b"\xff\xfe"}, None),  # the SDK decodes every header
    ({**BASE, "ce_source": b"\xff"}, None),
]


def sdk(raw: dict[str, bytes], key: str | None) -> dict[str, Any] | Exception:
    message = ce_kafka.KafkaMessage(headers=raw, key=key, value=b"")
    try:
        return dict(ce_kafka.from_kafka(message, JSON_FORMAT).get_attributes())
    except Exception as exc:  # whatever the SDK raises, the hand-written path must not pass
        return exc


@pytest.mark.parametrize(("raw", "key"), VALID)
def test_valid_records_read_as_the_sdk_reads_them(raw, key):
    expected = sdk(raw, key)
    assert not isinstance(expected, Exception)
    got = binary_attributes(raw, key)
    assert got is not None, "a plainly valid record takes the fast path"
    assert list(got) == list(expected), "the same attributes, in the same order"
    given = {name.lower() for name in raw}
    for name, value in expected.items():
        if name == "id" and "ce_id" not in given:
            assert isinstance(got[name], str)
            assert len(got[name]) == 36  # a fresh UUID, as the SDK makes
        elif name == "time" and "ce_time" not in given:
            assert abs(got[name] - value) < timedelta(seconds=5)
            assert got[name].tzinfo is not None
        else:
            assert got[name] == value, name
            assert type(got[name]) is type(value), name


@pytest.mark.parametrize(("raw", "key"), REFUSED_OR_OTHER)
def test_what_the_sdk_refuses_or_reads_otherwise_is_left_to_it(raw, key):
    assert binary_attributes(raw, key) is None  # the SDK decides (an error, or a 0.3 event)


def test_an_sdk_error_is_what_the_fast_path_leaves_to_it():
    refused = [sdk(raw, key) for raw, key in REFUSED_OR_OTHER]
    assert sum(isinstance(r, Exception) for r in refused) == len(REFUSED_OR_OTHER) - 1
    assert not isinstance(refused[0], Exception), "0.3 is valid, read by the SDK"
