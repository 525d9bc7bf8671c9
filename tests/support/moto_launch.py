"""``python -m tests.support.moto_launch``: the moto server, with one race in its SQS
queue closed.

moto 5.2.5's ``Queue.delete_message`` rebuilds the queue's message list without the
lock that ``add_message`` holds, and then assigns the new list. Two deletes on one
queue running at once (the server answers each request in a thread of its own), with
a send landing between them, lose the sent message: the delete that finishes last
assigns a list built before the send. It also brings back the message the other
delete removed. The sender was told the message was accepted; no consumer ever sees
it. The fault suite's SQS scenarios, whose feeder sends while the bridge deletes in
several calls at once, lost one message in about one run of ten that way (the
bridge's own log showed it never received it).

Real SQS has no such race; the tests are about the bridge, so the server they talk to
takes the lock for deletes too (``patch_moto``). Everything else is moto as shipped.
"""

from __future__ import annotations

import functools

from moto.sqs.models import Queue

_PATCHED = "_bridge_locked_delete"


def patch_moto() -> None:
    """Make ``Queue.delete_message`` hold the queue's message lock (idempotent).

    The lock is a ``threading.Condition`` over an ``RLock``, so a delete made while
    the lock is held (moto's own event-source path) still works."""
    original = Queue.delete_message
    if getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def delete_message(self: Queue, receipt_handle: str) -> None:
        with self._messages_lock:
            original(self, receipt_handle)

    setattr(delete_message, _PATCHED, True)
    Queue.delete_message = delete_message  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    from moto.server import main as serve

    patch_moto()
    serve(argv)


if __name__ == "__main__":
    main()
