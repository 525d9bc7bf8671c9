"""``type: kafka``: consume topics as a consumer group, commit only what is finished.

The core may finish a partition's messages in any order (different keys run in
parallel). Each partition has an ``OffsetTracker``; the offset committed is the lowest
one not finished yet, so a commit never passes a message that is still running,
retrying or waiting for its result to reach a sink.

What the settle verbs mean here:

========  ====================================================================
ack       the offset is finished; the next commit may pass it
nack      nothing: Kafka has no per-message redelivery. The offset stays
          unfinished, so commits stop below it and the message is delivered
          again after a restart or a rebalance (the core only nacks at shutdown)
========  ====================================================================

Commits (synchronous, ``enable.auto.commit`` and ``enable.auto.offset.store`` are
always off): every ``commit_interval``, inside the revoke callback before a partition
is given up, and at ``close``.

Backpressure: a partition with ``partition_buffer`` messages taken but not finished
(by default the larger of ``PARTITION_BUFFER`` and the core's window in messages, so a
window of batches is never starved by pausing) is paused (``Consumer.pause``:
librdkafka stops fetching it and drops what it had prefetched) and resumed once fewer
than half remain. ``receive`` takes no more than
the core asks for; when the core stops asking (pipeline paused, its buffer full) the
source still polls every second to stay in the group, holding what it gets. So a
partition holds at most ``partition_buffer`` messages plus the rest of the batch that
filled it, whatever the backlog, besides librdkafka's own bounded prefetch queue.

Rebalance: on revoke every unsettled delivery of the partition is marked
``revoked`` (the core drops those not started), in-flight work gets ``revoke_grace``
seconds to finish, what finished is committed, then the partition's epoch ends and
late acks are ignored. Deliveries still in the core after the grace are *zombies*: if
the partition comes back to this consumer, its messages are held until every zombie
settled or was dropped, so a redelivered message never joins a task the core is
about to drop, and keys stay in order.

Lag per partition: the high watermark librdkafka cached from its last fetch response
minus the committed offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence, Set
from itertools import repeat
from typing import Any, Final, Self

from confluent_kafka import Message

from connectors.kafka.client import ConsumerClient, TopicPartition
from connectors.kafka.headers import decode_record
from connectors.kafka.offsets import OffsetTracker
from connectors.kafka.reread import Rereader, parse_reference, reference
from consumer_core.config.model import ComponentSpec
from consumer_core.contracts import Delivery, FloodGuard, RawTenant, Resources
from consumer_core.errors import ConnectorError, FatalClientError

__all__ = ["KafkaDelivery", "KafkaSource", "consumer_config"]

log = logging.getLogger(__name__)

REVOKE_GRACE: Final = 2.0
"""Seconds in-flight messages of a revoked partition get to finish before it goes."""
KEEPALIVE: Final = 1.0
"""Seconds without a poll after which the source polls by itself."""
KEEPALIVE_BATCH: Final = 500
RUN: Final = 256
"""Most consecutive references of one tenant and partition one delivery carries."""
_UNKNOWN: Final = object()
"""``_take``'s ``tenant`` when the caller did not look it up."""
PARTITION_BUFFER: Final = 1000
"""The least ``partition_buffer`` when the pipeline does not set one."""
ZOMBIE_HOLD: Final = 60.0
"""The longest a returning partition's messages wait for zombies (a safety net: a
zombie that is a redelivered duplicate of another task is never reported dropped)."""

DEFAULT_SETTINGS: Final[Mapping[str, Any]] = {
    "auto.offset.reset": "earliest",
    "fetch.queue.backoff.ms": 20,  # measured: doubles batched throughput
    # librdkafka prefetches up to 64 MB per consumer by default; with paused partitions
    # and a deep backlog that is memory held for nothing (RSS crept in the backlog bench).
    "queued.max.messages.kbytes": 16384,
}
FORCED_SETTINGS: Final[Mapping[str, Any]] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
}


def consumer_config(
    *, bootstrap_servers: str, group_id: str, client_id: str, settings: Mapping[str, Any]
) -> dict[str, Any]:
    """librdkafka settings: our defaults < the user's ``settings`` < the commit rules."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        "client.id": client_id,
        **DEFAULT_SETTINGS,
    }
    config.update(settings)
    config.update(FORCED_SETTINGS)
    return config


class KafkaDelivery(Delivery):
    """One record.

    ``revoked`` is a property: the core reads it only when deciding whether to drop a
    task (at dispatch, or when a retry falls due), so a read that returns ``True``
    tells the source the delivery was dropped and will never be settled. Connector
    code sets ``revoked`` but never reads it (it reads ``_revoked_flag``)."""

    __slots__ = ("_dropped", "_epoch", "_offset", "_revoked_flag", "_source", "_state")

    def __init__(
        self,
        source: KafkaSource,
        state: PartitionState,
        offset: int,
        epoch: int,
        **kwargs: Any,
    ) -> None:
        self._revoked_flag = False
        self._dropped = False
        super().__init__(**kwargs)
        self._source = source
        self._state = state
        self._offset = offset
        self._epoch = epoch

    @property
    def revoked(self) -> bool:
        if self._revoked_flag and not self._dropped and self.settled is None:
            self._dropped = True
            self._source._gone(self)
        return self._revoked_flag

    @revoked.setter
    def revoked(self, value: bool) -> None:
        self._revoked_flag = value

    async def _ack(self) -> None:
        self._source._gone(self, finished=True)

    async def _nack(self, delay: float | None) -> None:
        self._source._gone(self)


class PartitionState:
    """One partition for the length of one assignment (owned by the event loop).

    ``deliveries`` are those handed to the core and not settled or dropped yet;
    ``held`` were taken while zombies of an earlier assignment were still in the core
    and wait to be handed over. Both are tracked by ``tracker``.
    """

    __slots__ = (
        "active",
        "buffer_paused",
        "deliveries",
        "generation",
        "held",
        "label",
        "references",
        "tp",
        "tracker",
    )

    def __init__(
        self, tp: TopicPartition, committed: int | None, generation: int | None = None
    ) -> None:
        self.tp = tp
        self.generation = generation
        """The client's assignment generation (``None``: not seen assigned)."""
        self.label = f"{tp[0]}/{tp[1]}"
        self.tracker = OffsetTracker()
        self.deliveries: dict[int, KafkaDelivery] = {}
        self.held: deque[KafkaDelivery] = deque()
        self.buffer_paused = False
        self.references = 0
        """Deliveries handed over as references (no message body) not settled yet."""
        self.active = True
        if committed is not None:
            # What the group committed before: no need to commit it again.
            self.tracker.committed(committed)

    @property
    def held_in_memory(self) -> int:
        """Messages taken and not finished, besides references: what ``partition_buffer``
        bounds (a reference costs next to nothing, and pausing the partition while a
        tenant's flood is read past as references would only slow the others)."""
        return self.tracker.outstanding - self.references

    def committed_offset(self) -> int | None:
        """The group's committed offset as far as this assignment knows."""
        return self.tracker.last_committed


class KafkaSource:
    """A consumer group member feeding the core (see the module docstring)."""

    type_name = "kafka"

    def __init__(
        self,
        *,
        pipeline: str,
        config: Mapping[str, Any],
        topics: Sequence[str],
        commit_interval: float = 1.0,
        partition_buffer: int | None = None,
        revoke_grace: float = REVOKE_GRACE,
    ) -> None:
        self.pipeline = pipeline
        self.group_id = str(config["group.id"])
        self.topics = list(topics)
        self.commit_interval = commit_interval
        self._buffer_follows_window = partition_buffer is None
        self._set_partition_buffer(
            PARTITION_BUFFER if partition_buffer is None else partition_buffer
        )
        self.revoke_grace = revoke_grace
        self.client = ConsumerClient(config, topics=topics, listener=self, name=pipeline)
        self._states: dict[TopicPartition, PartitionState] = {}
        self._zombies: dict[TopicPartition, set[KafkaDelivery]] = {}
        self._zombies_since: dict[TopicPartition, float] = {}
        self._released: deque[KafkaDelivery] = deque()
        self._failure: ConnectorError | None = None
        self._background: list[asyncio.Task[None]] = []
        self._polling = asyncio.Lock()
        """Held around a consume call and the tracking of its messages, so that the
        keepalive poll and ``receive`` never interleave (offsets must stay in order)."""
        self._last_poll = time.monotonic()
        self.full_read_at = 0.0
        """When a ``receive`` last read as many messages as it asked for (``Rereads``)."""
        self._closing = False
        self._left_core = asyncio.Event()
        """Set whenever a delivery is settled or dropped (the revoke grace waits on it)."""
        self._config = config
        self._spill_tenants: Set[str] = frozenset()
        self._tenant_of: RawTenant | None = None
        self._flood_guard: FloodGuard | None = None
        self._reads_headers = True
        self._rereader: Rereader | None = None

    @classmethod
    def from_config(cls, pipeline: str, spec: ComponentSpec, res: Resources) -> Self:
        o = spec.options
        config = consumer_config(
            bootstrap_servers=str(o["bootstrap_servers"]),
            group_id=str(o["group_id"]),
            client_id=f"bridge-{pipeline}",
            settings=dict(o.get("settings") or {}),
        )
        return cls(
            pipeline=pipeline,
            config=config,
            topics=list(o["topics"]),
            commit_interval=float(o.get("commit_interval", 1.0)),
            partition_buffer=None
            if o.get("partition_buffer") is None
            else int(o["partition_buffer"]),
        )

    def _set_partition_buffer(self, messages: int) -> None:
        self.partition_buffer = max(1, messages)
        self.resume_below = max(1, self.partition_buffer // 2)

    def window_changed(self, messages: int) -> None:
        """The core may now have ``messages`` in flight: without a ``partition_buffer`` of
        its own, a partition may hold that many (at least ``PARTITION_BUFFER``). With
        batches (100 events per call, 64 calls) a fixed 1,000 paused every partition
        long before the window was full: librdkafka then dropped and fetched again what
        it had read ahead (the bench's batch drain: a median 10,109 msgs/s against
        13,532 with this and the changes that came with it, docs/performance.md)."""
        if self._buffer_follows_window:
            self._set_partition_buffer(max(PARTITION_BUFFER, messages))

    def __repr__(self) -> str:
        return f"KafkaSource(topics={self.topics!r}, group_id={self.group_id!r})"

    # ----------------------------------------------------------------- lifecycle

    async def connect(self) -> None:
        """Create the consumer and join the group. ``NotConnected`` when no broker
        answers (the core retries), ``FatalClientError`` for invalid settings."""
        await self.client.start()
        self._last_poll = time.monotonic()
        if not self._background:
            self._background = [
                asyncio.create_task(self._commit_loop(), name=f"{self.pipeline}:kafka-commit"),
                asyncio.create_task(
                    self._keepalive_loop(), name=f"{self.pipeline}:kafka-keepalive"
                ),
            ]

    async def close(self) -> None:
        """Commit what finished, leave the group, stop the consumer thread. Called
        once, after the core settled everything it will settle."""
        self._closing = True
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        await self.commit()
        await self.client.close()
        if self._rereader is not None:
            await self._rereader.close()

    # ----------------------------------------------------------------- receive

    async def receive(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        """Up to ``max_messages`` deliveries, or none after ``timeout`` seconds.

        Raises ``FatalClientError`` when the consumer cannot go on (the pipeline
        stops) and ``NotConnected`` for a transient client failure.
        """
        if self._failure is not None:
            raise self._failure
        if self._zombies_since:
            self._expire_zombies()
        out: list[Delivery] = []
        while self._released and len(out) < max_messages:
            ready = self._released.popleft()
            if ready._state.active:
                ready._state.deliveries[ready._offset] = ready
                out.append(ready)
        room = max_messages - len(out)
        if room <= 0:
            return out
        async with self._polling:
            messages = await self.client.consume(room, 0.0 if out else timeout)
            self._last_poll = time.monotonic()
            full = len(messages) >= room
            if full:
                self.full_read_at = self._last_poll
            for delivery in self._accept(messages, full=full):
                delivery._state.deliveries[delivery._offset] = delivery
                out.append(delivery)
        return out

    def _accept(
        self, messages: Sequence[Message[Any, Any]], *, full: bool = False
    ) -> list[KafkaDelivery]:
        """Track ``messages``; return those that may go to the core now (in order) and
        hold the others (their partition still has zombies). Pauses partitions whose
        buffer is full. A ``full`` read goes past the flood guard first."""
        ready: list[KafkaDelivery] = []
        to_pause: list[TopicPartition] = []
        run: KafkaDelivery | None = None  # the references being gathered
        tenants = self._guard(messages) if full and self._flood_guard is not None else None
        paired = repeat(_UNKNOWN) if tenants is None else tenants
        for message, tenant in zip(messages, paired, strict=False):  # repeat() has no end
            delivery = self._take(message, run, tenant)
            if delivery is None or delivery is run:
                continue
            run = delivery if delivery.reference is not None else None
            state = delivery._state
            if state.tp in self._zombies:
                state.held.append(delivery)
            else:
                ready.append(delivery)
            if not state.buffer_paused and state.held_in_memory >= self.partition_buffer:
                state.buffer_paused = True
                to_pause.append(state.tp)
        if to_pause:
            log.debug("kafka: pausing %s (partition_buffer full)", to_pause)
            self.client.pause_nowait(to_pause)
        return ready

    async def _keepalive_loop(self) -> None:
        """Poll when the core has not asked for a while (pipeline paused, or its
        buffer full): librdkafka serves rebalances only inside a poll, and a member
        that does not poll for ``max.poll.interval.ms`` is put out of the group.
        Messages taken here wait in ``_released``: up to ``KEEPALIVE_BATCH``, then one
        more per poll."""
        while True:
            await asyncio.sleep(KEEPALIVE)
            idle = time.monotonic() - self._last_poll
            if self._closing or self._polling.locked() or idle < KEEPALIVE:
                continue
            async with self._polling:
                # Once a keep-alive batch waits untaken, take one message per poll: the
                # poll is for the group, and what waits is bounded by that, not only by
                # ``partition_buffer`` (which follows the window, and can be large).
                size = KEEPALIVE_BATCH if len(self._released) < KEEPALIVE_BATCH else 1
                try:
                    messages = await self.client.consume(size, 0.0)
                except FatalClientError as exc:
                    self._failure = exc
                    continue
                except ConnectorError as exc:
                    log.warning("kafka: polling while idle: %s", exc)
                    continue
                self._last_poll = time.monotonic()
                self._released.extend(self._accept(messages))

    # ----------------------------------------------------------------- spilling by reference

    def spill_by_reference(
        self,
        tenants: Set[str],
        tenant_of: RawTenant,
        flood_guard: FloodGuard | None = None,
        *,
        reads_headers: bool = True,
    ) -> None:
        """Hand messages of ``tenants`` over undecoded, as references (see ``Rereads``)."""
        self._spill_tenants = tenants
        self._tenant_of = tenant_of
        self._flood_guard = flood_guard
        self._reads_headers = reads_headers

    def _raw_tenant(self, message: Message[Any, Any]) -> str | None:
        return self._raw_tenants([message])[0]

    def _raw_tenants(self, messages: Sequence[Message[Any, Any]]) -> list[str | None]:
        """Each message's tenant as ``tenant_of`` tells it raw. confluent-kafka keeps a
        record's list of headers once built (decoding reuses it), and a consumed record's
        headers are a list or None, never the dict the stubs also allow (a producer's
        input)."""
        tenant_of = self._tenant_of
        assert tenant_of is not None
        if self._reads_headers:
            return [tenant_of(m.key(), m.headers()) for m in messages]  # type: ignore[arg-type]
        return [tenant_of(m.key(), None) for m in messages]

    def _guard(self, messages: Sequence[Message[Any, Any]]) -> list[str | None]:
        """Each message's tenant, after showing the flood guard how many each has."""
        tenants = self._raw_tenants(messages)
        counts = {t: n for t, n in Counter(tenants).items() if t is not None}  # counted in C
        assert self._flood_guard is not None
        self._flood_guard(counts, len(messages))
        return tenants

    def position(self, delivery: Delivery) -> tuple[str, int] | None:
        """``(topic/partition, offset)`` of a decoded record of a current assignment."""
        if not isinstance(delivery, KafkaDelivery) or delivery._source is not self:
            return None
        if delivery.reference is not None or delivery._revoked_flag:
            return None
        if not delivery._state.active:
            return None
        return delivery._state.label, delivery._offset

    async def reread(self, references: Sequence[str]) -> Mapping[str, Delivery]:
        """The referenced records still in their partitions, decoded (never settled)."""
        if self._rereader is None:
            self._rereader = Rereader(self._config, name=self.pipeline)
        wanted = {parse_reference(ref): ref for ref in references}
        records = await self._rereader.fetch(list(wanted))
        out: dict[str, Delivery] = {}
        for (tp, offset), message in records.items():
            out[wanted[(tp, offset)]] = Delivery(**self._decode(message, tp, offset))
        return out

    def _take(
        self,
        message: Message[Any, Any],
        run: KafkaDelivery | None = None,
        tenant: str | object | None = _UNKNOWN,
    ) -> KafkaDelivery | None:
        """Track ``message`` and make a delivery of it; ``None`` for a record that is not
        one. A message of a tenant that spills by reference extends ``run`` (returned)
        when it can, else starts a new run of references. ``tenant`` is the message's
        raw tenant when the caller has it already (else ``_UNKNOWN``)."""
        spilling = bool(self._spill_tenants) and self._tenant_of is not None
        if spilling and tenant is _UNKNOWN:
            tenant = self._raw_tenant(message)
        if run is not None and tenant == run.tenant and len(run.positions) < RUN:
            # The one way a run grows: the next record of the run's tenant (which spills:
            # the set does not change during one ``_accept``) in the run's partition and
            # epoch. Anything else starts a new delivery below.
            current = run._state
            if message.partition() == current.tp[1] and message.topic() == current.tp[0]:
                at = message.offset()
                tracker = current.tracker
                if (
                    at is not None
                    and at >= 0
                    and tracker.epoch == run._epoch
                    and tracker.follows(at)
                ):
                    tracker.track(at)
                    current.references += 1
                    run.positions.append(at)
                    return run
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None or offset < 0:
            return None
        tp = (topic, partition)
        state = self._states.get(tp)
        if state is None:  # assigned without a callback we saw: start an epoch
            state = self._states[tp] = PartitionState(tp, None)
        try:
            epoch = state.tracker.track(offset)
        except ValueError:
            # The consumer went back (an offset reset): a new epoch for this partition.
            log.warning("kafka: %s went back to offset %d; starting over", state.label, offset)
            committed = state.committed_offset()
            self._end_assignment(state)
            state = self._states[tp] = PartitionState(tp, committed, state.generation)
            epoch = state.tracker.track(offset)
        if spilling and isinstance(tenant, str) and tenant in self._spill_tenants:
            state.references += 1
            delivery = KafkaDelivery(
                self, state, offset, epoch, event=None, event_id=reference(*tp, offset)
            )
            delivery.reference, delivery.tenant = state.label, tenant
            delivery.positions = [offset]
            return delivery
        return KafkaDelivery(self, state, offset, epoch, **self._decode(message, tp, offset))

    def _decode(self, message: Message[Any, Any], tp: TopicPartition, offset: int) -> Any:
        """The keyword arguments of a ``Delivery`` for ``message``."""
        topic, partition = tp
        decoded = decode_record(
            topic=topic,
            partition=partition,
            offset=offset,
            key=message.key(),
            value=message.value(),
            headers=message.headers(),
        )
        _, timestamp = message.timestamp()
        return {
            "event": decoded.event,
            "event_id": decoded.event_id,
            "raw": message.value() or b"",
            "key": decoded.key,
            "partition": f"{topic}/{partition}",
            "headers": decoded.headers,
            "attributes": {
                "messaging.system": "kafka",
                "messaging.destination.name": topic,
                "messaging.destination.partition.id": str(partition),
                "messaging.kafka.message.offset": offset,
                "messaging.kafka.message.key": decoded.key,
                "messaging.kafka.message.timestamp": timestamp,
                "messaging.consumer.group.name": self.group_id,
                "messaging.message.id": decoded.event_id,
            },
            "decode_error": decoded.error,
        }

    # ----------------------------------------------------------------- settling

    def _gone(self, delivery: KafkaDelivery, *, finished: bool = False) -> None:
        """A delivery left the core: acked (``finished``), nacked, or dropped."""
        state = delivery._state
        self._left_core.set()
        if not state.active:
            self._zombie_gone(delivery)
            return
        state.deliveries.pop(delivery._offset, None)
        if delivery.reference is not None:
            state.references -= len(delivery.positions)
            if finished:
                for offset in delivery.positions:
                    state.tracker.done(offset, delivery._epoch)
        elif finished:
            state.tracker.done(delivery._offset, delivery._epoch)
        if state.buffer_paused and state.held_in_memory < self.resume_below:
            state.buffer_paused = False
            log.debug("kafka: resuming %s", state.label)
            self.client.resume_nowait([state.tp])

    def _zombie_gone(self, delivery: KafkaDelivery) -> None:
        tp = delivery._state.tp
        zombies = self._zombies.get(tp)
        if zombies is None:
            return
        zombies.discard(delivery)
        if not zombies:
            self._release(tp)

    def _expire_zombies(self) -> None:
        now = time.monotonic()
        for tp, since in list(self._zombies_since.items()):
            if now - since > ZOMBIE_HOLD:
                log.warning(
                    "kafka: %s[%d]: %d messages of an earlier assignment still in the core "
                    "after %.0fs; handing the partition's messages over anyway",
                    tp[0],
                    tp[1],
                    len(self._zombies.get(tp, ())),
                    ZOMBIE_HOLD,
                )
                self._release(tp)

    def _release(self, tp: TopicPartition) -> None:
        self._zombies.pop(tp, None)
        self._zombies_since.pop(tp, None)
        state = self._states.get(tp)
        if state is not None and state.held:
            log.info("kafka: %s: releasing %d held messages", state.label, len(state.held))
            self._released.extend(state.held)
            state.held.clear()

    # ----------------------------------------------------------------- rebalance (loop side)

    def on_assigned(
        self,
        partitions: Sequence[TopicPartition],
        committed: Mapping[TopicPartition, int],
        generation: int | None = None,
    ) -> None:
        """The client assigned ``partitions``: each starts a new epoch."""
        for tp in partitions:
            old = self._states.pop(tp, None)
            if old is not None:
                self._end_assignment(old)
            self._states[tp] = PartitionState(tp, committed.get(tp), generation)

    async def on_revoking(
        self, partitions: Sequence[TopicPartition]
    ) -> Mapping[TopicPartition, int]:
        """The client is about to give ``partitions`` up (its thread waits for this):
        drop their queued work, give in-flight work ``revoke_grace`` seconds (none when
        closing), end their epochs and return the offsets to commit first."""
        states = [s for tp in partitions if (s := self._states.pop(tp, None)) is not None]
        for state in states:
            for delivery in state.deliveries.values():
                delivery.revoked = True
            state.held.clear()
        deadline = time.monotonic() + (0.0 if self._closing else self.revoke_grace)
        while any(s.deliveries for s in states):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._left_core.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._left_core.wait(), remaining)
        offsets: dict[TopicPartition, int] = {}
        for state in states:
            offset = state.tracker.committable()
            if offset is not None:
                offsets[state.tp] = offset
            self._end_assignment(state)
        if states:
            log.info(
                "kafka: giving up %d partitions; committing %s",
                len(states),
                ", ".join(f"{t}[{p}]@{o}" for (t, p), o in offsets.items()) or "nothing new",
            )
        return offsets

    async def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        """The group took ``partitions`` away without a revoke: nothing may be
        committed for them; their messages in the core become zombies."""
        for tp in partitions:
            state = self._states.pop(tp, None)
            if state is not None:
                self._end_assignment(state)

    def _end_assignment(self, state: PartitionState) -> None:
        """The partition is no longer ours in this epoch: late acks are ignored and
        deliveries still in the core become zombies."""
        state.active = False
        state.held.clear()
        for delivery in state.deliveries.values():
            delivery.revoked = True
        if state.deliveries:
            log.info(
                "kafka: %s: %d messages still in flight after the grace; "
                "their next owner processes them again",
                state.label,
                len(state.deliveries),
            )
            self._zombies.setdefault(state.tp, set()).update(state.deliveries.values())
            self._zombies_since.setdefault(state.tp, time.monotonic())
        state.deliveries.clear()
        state.tracker.revoke()

    # ----------------------------------------------------------------- commits

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.commit_interval)
            await self.commit()

    async def commit(self) -> None:
        """Commit every partition's committable offset now. Transient failures are
        logged (the next round tries again); a fatal one makes ``receive`` raise."""
        wanted = {
            tp: (state, offset)
            for tp, state in self._states.items()
            if (offset := state.tracker.committable()) is not None
        }
        if not wanted:
            return
        try:
            accepted = await self.client.commit(
                {tp: o for tp, (_, o) in wanted.items()},
                {tp: s.generation for tp, (s, _) in wanted.items()},
            )
        except FatalClientError as exc:
            log.error("kafka: committing offsets failed for good: %s", exc)
            self._failure = exc
            return
        except ConnectorError as exc:
            log.warning("kafka: committing offsets: %s (will retry)", exc)
            return
        for tp, offset in accepted.items():
            state, _ = wanted[tp]
            if state.active:
                state.tracker.committed(offset)

    # ----------------------------------------------------------------- capabilities

    def lag(self) -> Mapping[str, int]:
        """Per partition: cached high watermark minus the committed offset (or, before
        the first commit, the first offset taken). Partitions not fetched yet are left
        out."""
        highs = self.client.high_watermarks
        lag: dict[str, int] = {}
        for tp, state in self._states.items():
            high = highs.get(tp)
            base = state.committed_offset()
            if base is None:
                base = state.tracker.position()
            if high is not None and base is not None:
                lag[state.label] = max(0, high - base)
        return lag

    async def pause(self) -> None:
        """Stop fetching every assigned partition (and any assigned later)."""
        await self.client.pause_all()

    async def resume(self) -> None:
        """Fetch again, except partitions whose ``partition_buffer`` is still full."""
        await self.client.resume_all(tp for tp, s in self._states.items() if s.buffer_paused)
