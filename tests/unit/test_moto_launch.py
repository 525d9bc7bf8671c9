"""The tests' moto server loses no message when deletes and sends race
(``tests.support.moto_launch``): two threads delete received messages while a third
sends, as the bridge's concurrent DeleteMessageBatch calls and a feeder do. Without the
patch, about a third of the messages sent meanwhile vanished in this test."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import pytest
from moto.sqs.models import Message, Queue

from tests.support.moto_launch import patch_moto


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads often, so the interleavings that lost messages happen."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_deletes_racing_a_send_lose_nothing(fast_switching: None) -> None:
    patch_moto()
    queue = Queue("race", "us-east-1", "123456789012")
    received = [Message(f"old-{n}", "body") for n in range(600)]
    for message in received:
        queue.add_message(message)
        message.mark_received(visibility_timeout=30)
    sent: list[Message] = []
    deleting = threading.Event()
    deleting.set()

    def send() -> None:
        n = 0
        while deleting.is_set():
            message = Message(f"new-{n}", "body")
            queue.add_message(message)
            sent.append(message)
            n += 1
            time.sleep(0.0002)

    def delete(messages: list[Message]) -> None:
        for message in messages:
            queue.delete_message(message.receipt_handle)
            time.sleep(0)  # let the sender in between two deletes

    sender = threading.Thread(target=send)
    deleters = [threading.Thread(target=delete, args=(received[i:300:2],)) for i in (0, 1)]
    sender.start()
    for thread in deleters:
        thread.start()
    for thread in deleters:
        thread.join()
    deleting.clear()
    sender.join()

    kept = {m.id for m in queue._messages}
    assert len(sent) >= 20, "the sender should have run while the deletes did"
    assert [m.id for m in sent if m.id not in kept] == []
    deleted = {m.id for m in received[:300]}
    assert not deleted & kept, "a deleted message came back"
    assert len(kept) == 300 + len(sent)
