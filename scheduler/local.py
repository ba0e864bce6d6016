"""The local scheduler: fires cron triggers in this process, without Kubernetes.

``autostep scheduler run`` with ``AUTOSTEP_SCHEDULER_BACKEND=local`` runs a
:class:`LocalScheduler` on plain threads (no nameko, no eventlet). Several
may run at once; one leads and fires, the others wait:

- **Leadership** is a PostgreSQL session advisory lock
  (:data:`LEADER_LOCK`) taken on a connection of its own. The leader checks
  that connection before every pass; when it is gone, so is the lock, and
  the leader stops firing. The others try again every
  ``AUTOSTEP_SCHEDULER_RETRY_SECONDS``. Two leaders for a moment would still
  start one run per tick: ``trigger_tick``'s key sees to that.
- **What fires**: the enabled cron triggers, kept in memory with a heap of
  their next due times. Each pass first reads a fingerprint of the trigger
  table (one cheap query: ids and versions) and reloads when it changed, so
  a trigger created, changed, disabled or deleted is followed within
  ``AUTOSTEP_SCHEDULER_POLL_SECONDS`` (a disabled or deleted trigger never
  fires anyway: firing reads it under a lock).
- **Firing**: the triggers due in a pass are split evenly among the
  workers, in batches of up to :data:`BATCH`. A batch's transaction reads
  the triggers and their last recorded ticks (one query) and applies each one's catch-up policy
  (:func:`autostep.firing.plan_ticks`) to every tick since, up to now; it
  records the ticks the policies skip and fires each trigger's first due
  tick with :func:`autostep.tick_batch.fire_ticks` (a handful of
  statements for the whole batch). Every further due tick (after a
  downtime) comes in a round of its own, one transaction per round, so a
  crash in the middle of a catch-up keeps the ticks already fired. In
  steady state that is one transaction per batch. A new leader, a reloaded trigger and a restart
  start with such a pass: that is the catch-up after a downtime.
- **Time** comes from a :class:`~autostep.scheduler.clock.Clock`: the real
  one, or a simulated timeline (``AUTOSTEP_SCHEDULER_CLOCK``) for tests.

One log line per tick started or skipped at INFO; when a pass handles more
than :data:`LOG_EACH_UP_TO` ticks, one summary line instead.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from sqlalchemy import func, literal_column, select
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session, sessionmaker

from autostep import health
from autostep.db import database_outages, error_summary, unit_of_work
from autostep.exceptions import AutostepError, DatabaseUnavailable
from autostep.firing import (
    FireOutcome,
    TickPlan,
    TickResult,
    fire_tick,
    last_tick,
    plan_ticks,
    record_skipped,
)
from autostep.models import Trigger, TriggerTick
from autostep.scheduler.clock import Clock, SystemClock
from autostep.settings import libpq_dsn
from autostep.tick_batch import fire_ticks
from autostep.trigger_kinds import CronConfig, next_fire_times

__all__ = ["BATCH", "LEADER_LOCK", "LOG_EACH_UP_TO", "UPCOMING", "LocalScheduler"]

log = logging.getLogger(__name__)

#: The advisory lock the leader holds: pg_try_advisory_lock(LEADER_LOCK, 0).
LEADER_LOCK = 0x61730003
#: A pass handling more ticks than this logs one summary line instead of one per tick.
LOG_EACH_UP_TO = 20
#: Fire times of a trigger computed at once.
UPCOMING = 60
#: Due triggers fired together at most, in one transaction per round of their ticks. The
#: due triggers of a pass are split evenly among the workers, in batches of up to this many,
#: so that every worker has a batch at once and none waits for another's.
BATCH = 500
#: Seconds to wait for PostgreSQL when connecting for leadership.
CONNECT_TIMEOUT = 5
#: Changes whenever an enabled cron trigger is created, changed, disabled or deleted.
_FINGERPRINT = select(
    func.count(),
    func.md5(
        func.string_agg(
            func.concat(Trigger.id, ":", Trigger.version),
            aggregate_order_by(literal_column("','"), Trigger.id),
        )
    ),
).where(Trigger.kind == "cron", Trigger.enabled)
_LOGGED = (FireOutcome.STARTED, FireOutcome.SKIPPED, FireOutcome.ALREADY_FIRED)
#: A trigger, what firing it did (or the outage that stopped it), and its next fire times.
_Fired = tuple[uuid.UUID, list[TickResult] | DatabaseUnavailable, list[datetime]]


@dataclass
class _Entry:
    """One enabled cron trigger as the scheduler keeps it."""

    config: CronConfig
    version: int
    due: datetime
    #: The next fire times, computed :data:`UPCOMING` at a time (a walk costs milliseconds).
    upcoming: list[datetime] = field(default_factory=list)


class LocalScheduler:
    """Fires due cron ticks while it holds leadership; see the module's docstring.

    ``run`` loops until its stop event is set. Tests may instead call
    :meth:`step` (one pass at the clock's time) after :meth:`try_lead`.
    ``workers`` > 1 fires that many triggers' ticks at once, each in its
    own transaction.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        database_url: str,
        clock: Clock | None = None,
        *,
        poll_seconds: float = 1.0,
        retry_seconds: float = 3.0,
        workers: int = 1,
        name: str = "scheduler",
    ) -> None:
        self.sessions = sessions
        self.database_url = database_url
        self.clock: Clock = clock or SystemClock()
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self.name = name
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, name) if workers > 1 else None
        self._leader: psycopg.Connection[tuple[object, ...]] | None = None
        self._entries: dict[uuid.UUID, _Entry] = {}
        self._heap: list[tuple[datetime, int, uuid.UUID, int]] = []
        self._pushed = 0
        self._fingerprint: tuple[object, ...] | None = None

    # -- leadership ---------------------------------------------------------

    def try_lead(self) -> bool:
        """Whether this scheduler leads: it holds the lock now, or just took it."""
        if self._leader is not None:
            try:
                self._leader.execute("SELECT 1")
                return True
            except psycopg.Error as exc:
                log.warning("%s: lost leadership: %s", self.name, error_summary(exc))
                self.resign()
        try:
            conn = psycopg.connect(
                libpq_dsn(self.database_url),
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                application_name=f"autostep {self.name}",
            )
        except psycopg.Error as exc:
            log.warning("%s: cannot reach the database: %s", self.name, error_summary(exc))
            return False
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s, 0)", (LEADER_LOCK,)).fetchone()
        except psycopg.Error as exc:
            log.warning("%s: cannot take the lock: %s", self.name, error_summary(exc))
            got = None
        if not got or not got[0]:
            conn.close()
            return False
        self._leader = conn
        # a new leader knows nothing: every trigger gets a catch-up pass
        self._entries.clear()
        self._heap.clear()
        self._fingerprint = None
        log.info("%s: leading; firing cron triggers", self.name)
        return True

    def resign(self) -> None:
        """Give up leadership (closing the lock's connection releases the lock)."""
        if self._leader is not None:
            with contextlib.suppress(psycopg.Error):
                self._leader.close()
            self._leader = None

    @property
    def leading(self) -> bool:
        return self._leader is not None

    # -- the loop -----------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Lead (or wait to) and fire due ticks until ``stop`` is set."""
        log.info("%s: started; waiting for leadership", self.name)
        try:
            while not stop.is_set():
                health.beat("scheduler")  # for `autostep health scheduler`: the loop turns
                if not self.try_lead():
                    stop.wait(self.retry_seconds)
                    continue
                try:
                    self.step()
                except DatabaseUnavailable as exc:
                    log.warning("%s: %s; stepping down", self.name, exc)
                    self.resign()
                    stop.wait(self.retry_seconds)
                    continue
                wake = self.next_due() or self.clock.now() + timedelta(days=1)
                self.clock.sleep_until(wake, stop, self.poll_seconds)
        finally:
            self.resign()
            if self._pool is not None:
                self._pool.shutdown()
            log.info("%s: stopped", self.name)

    def step(self) -> list[TickResult]:
        """One pass: reload the triggers if they changed, fire what is due now."""
        self._reload()
        now = self.clock.now()
        due: list[uuid.UUID] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, trigger_id, version = heapq.heappop(self._heap)
            entry = self._entries.get(trigger_id)
            if entry is not None and entry.version == version:
                due.append(trigger_id)
        size = min(BATCH, -(-len(due) // self.workers)) or 1
        batches = [due[n : n + size] for n in range(0, len(due), size)]
        if self._pool is not None and len(batches) > 1:
            handled = [item for done in self._pool.map(self._fire_batch, batches) for item in done]
        else:
            handled = [item for batch in batches for item in self._fire_batch(batch)]
        results: list[TickResult] = []
        outage: DatabaseUnavailable | None = None
        for trigger_id, fired, upcoming in handled:
            if isinstance(fired, DatabaseUnavailable):
                outage = fired
            else:
                results.extend(fired)
            if upcoming:
                entry = self._entries[trigger_id]
                entry.due, entry.upcoming = upcoming[0], upcoming
                self._push(trigger_id)
        self._log(results)
        if outage is not None:
            raise outage
        return results

    def next_due(self) -> datetime | None:
        """When the next trigger is due, on this scheduler's clock."""
        return self._heap[0][0] if self._heap else None

    # -- internals ----------------------------------------------------------

    def _fire_batch(self, trigger_ids: list[uuid.UUID]) -> list[_Fired]:
        """Fire what is due of a batch of triggers, round by round; when to come back to each.

        The first transaction plans every trigger's ticks by its catch-up
        policy (:func:`autostep.firing.plan_ticks`, from its last recorded
        tick), records those it skips and fires each trigger's first due
        tick with :func:`autostep.tick_batch.fire_ticks`; round *n* fires
        each trigger's *n*-th due tick in a transaction of its own, so a
        trigger's ticks go oldest first and a crash in a long catch-up keeps
        what was done. When a batch fails for another reason than an outage,
        its triggers are fired again one by one (:meth:`_fire`), so a broken
        trigger holds back only itself.
        """
        now = self.clock.now()
        results: dict[uuid.UUID, list[TickResult]] = {trigger_id: [] for trigger_id in trigger_ids}
        try:
            with database_outages(), unit_of_work(self.sessions) as session:
                plans = self._plans(session, trigger_ids, now)
                for trigger_id, plan in plans.items():
                    record_skipped(session, trigger_id, plan.skip)
                    results[trigger_id] += [
                        TickResult(trigger_id, FireOutcome.SKIPPED, scheduled_at=tick, reason=why)
                        for tick, why in plan.skip
                    ]
                self._fire_round(session, plans, 0, results, now)
            rounds = max((len(plan.fire) for plan in plans.values()), default=0)
            for n in range(1, rounds):
                with database_outages(), unit_of_work(self.sessions) as session:
                    self._fire_round(session, plans, n, results, self.clock.now())
        except DatabaseUnavailable as exc:
            return [(trigger_id, exc, [now]) for trigger_id in trigger_ids]
        except AutostepError as exc:
            log.warning("%s: a batch of triggers: %s; firing them one by one", self.name, exc)
            return [self._fire(trigger_id) for trigger_id in trigger_ids]
        return [
            (trigger_id, results[trigger_id], self._upcoming(trigger_id, now))
            for trigger_id in trigger_ids
        ]

    @staticmethod
    def _fire_round(
        session: Session,
        plans: dict[uuid.UUID, TickPlan],
        n: int,
        results: dict[uuid.UUID, list[TickResult]],
        now: datetime,
    ) -> None:
        """Fire the ``n``-th due tick of each plan that has one."""
        ticks = [
            (trigger_id, plan.fire[n]) for trigger_id, plan in plans.items() if n < len(plan.fire)
        ]
        for result in fire_ticks(session, ticks, now=now) if ticks else []:
            results[uuid.UUID(str(result.trigger_id))].append(result)

    def _upcoming(self, trigger_id: uuid.UUID, now: datetime) -> list[datetime]:
        entry = self._entries[trigger_id]
        upcoming = [tick for tick in entry.upcoming if tick > now]
        return upcoming or next_fire_times(entry.config, now, UPCOMING)

    @staticmethod
    def _plans(
        session: Session, trigger_ids: list[uuid.UUID], now: datetime
    ) -> dict[uuid.UUID, TickPlan]:
        """The catch-up plans of the enabled cron triggers among ``trigger_ids``: one query."""
        last = (
            select(func.max(TriggerTick.scheduled_at))
            .where(TriggerTick.trigger_id == Trigger.id)
            .scalar_subquery()
        )
        rows = session.execute(
            select(Trigger.id, Trigger.config, Trigger.active_since, last).where(
                Trigger.id.in_(trigger_ids), Trigger.kind == "cron", Trigger.enabled
            )
        )
        return {
            trigger_id: plan_ticks(CronConfig.model_validate(config), last_at, since, now)
            for trigger_id, config, since, last_at in rows
        }

    def _reload(self) -> None:
        with database_outages(), unit_of_work(self.sessions) as session:
            fingerprint = tuple(session.execute(_FINGERPRINT).one())
            if fingerprint == self._fingerprint:
                return
            rows = session.execute(
                select(Trigger.id, Trigger.version, Trigger.config).where(
                    Trigger.kind == "cron", Trigger.enabled
                )
            ).all()
        now = self.clock.now()
        present = set()
        for trigger_id, version, config in rows:
            present.add(trigger_id)
            entry = self._entries.get(trigger_id)
            if entry is None or entry.version != version:
                # new or changed: a pass now, which catches up what is due
                self._entries[trigger_id] = _Entry(CronConfig.model_validate(config), version, now)
                self._push(trigger_id)
        for gone in set(self._entries) - present:
            del self._entries[gone]
        self._fingerprint = fingerprint
        log.debug("%s: following %d cron triggers", self.name, len(self._entries))

    def _push(self, trigger_id: uuid.UUID) -> None:
        entry = self._entries[trigger_id]
        self._pushed += 1
        heapq.heappush(self._heap, (entry.due, self._pushed, trigger_id, entry.version))

    def _fire(self, trigger_id: uuid.UUID) -> _Fired:
        """Fire what is due of one trigger, each tick in its own transaction; when to come back.

        The first transaction plans the ticks by the catch-up policy
        (:func:`autostep.firing.plan_ticks`, from the last recorded tick),
        records those it skips and fires the first; every further tick gets
        a transaction of its own, so a crash in a long catch-up keeps what
        was done. The path of a batch that failed: it only reads the entry,
        the caller updates the heap.
        """
        now = self.clock.now()
        results: list[TickResult] = []
        try:
            with database_outages(), unit_of_work(self.sessions) as session:
                plan = self._plan(session, trigger_id, now)
                record_skipped(session, trigger_id, plan.skip)
                results += [
                    TickResult(trigger_id, FireOutcome.SKIPPED, scheduled_at=tick, reason=reason)
                    for tick, reason in plan.skip
                ]
                if plan.fire:
                    results.append(fire_tick(session, trigger_id, plan.fire[0], now=now))
            for tick in plan.fire[1:]:
                with database_outages(), unit_of_work(self.sessions) as session:
                    results.append(fire_tick(session, trigger_id, tick, now=self.clock.now()))
        except DatabaseUnavailable as exc:
            return trigger_id, exc, [now]
        except AutostepError as exc:
            log.warning("%s: trigger %s: %s; trying again", self.name, trigger_id, exc)
            return trigger_id, results, [now + timedelta(seconds=self.poll_seconds)]
        return trigger_id, results, self._upcoming(trigger_id, now)

    @staticmethod
    def _plan(session: Session, trigger_id: uuid.UUID, now: datetime) -> TickPlan:
        """The catch-up plan of the trigger as it is now (nothing if disabled or gone)."""
        trigger = session.get(Trigger, trigger_id)
        if trigger is None or not trigger.enabled or trigger.kind != "cron":
            return TickPlan()
        config = CronConfig.model_validate(trigger.config)
        return plan_ticks(config, last_tick(session, trigger_id), trigger.active_since, now)

    def _log(self, results: list[TickResult]) -> None:
        shown = [result for result in results if result.outcome in _LOGGED]
        if len(shown) <= LOG_EACH_UP_TO:
            for result in shown:
                log.info("%s: %s", self.name, result.describe())
            return
        counts = Counter(result.outcome.replace("_", " ") for result in shown)
        summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items()))
        log.info("%s: %d ticks: %s", self.name, len(shown), summary)
