"""Breaks each guarantee on purpose and checks that a test notices: the audit, kept.

Every entry of :data:`MUTATIONS` is one breakage: a piece of code replaced
in a temporary copy of the repository, and the tests that must fail because
of it. For each one the script copies the tree (without ``.venv``), applies
the change, runs those tests with the copy first on ``PYTHONPATH`` (the
processes the end-to-end tests start run the copy too), and counts the runs
in which at least one of them failed. A breakage that no test catches is a
promise without a proof.

    .venv/bin/python bench/mutations.py                   # every breakage once
    .venv/bin/python bench/mutations.py --times 5         # 5 runs each
    .venv/bin/python bench/mutations.py --only lease      # names containing "lease"
    .venv/bin/python bench/mutations.py --clean 3         # the unbroken tests, 3 times

Like ``./dev test`` it needs PostgreSQL and RabbitMQ; each pytest run makes
and drops its own database and vhost. It exits 1 when a breakage survived
a run (or a clean run failed), else 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    """Replace ``old`` (which must occur exactly once) by ``new`` in ``path``.

    With ``browser``, the web UI is built again from the changed sources (with
    the checkout's ``ui/node_modules``) and ``tests`` are browser tests, run
    with their own ``tests/browser/pytest.ini``.
    """

    name: str
    promise: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    browser: bool = False


EXACTLY_ONCE = "tests/service/test_exactly_once.py"
RELAY = "tests/service/test_relay.py"
DISPATCH = "tests/service/test_dispatch.py"
GROUP = "tests/service/test_group.py"
FAILURES = "tests/service/test_failures.py"
ORDERING = "tests/e2e/test_ordering.py"
CRASH = "tests/e2e/test_crash.py"
JOB_CONTROL = "tests/service/test_job_control.py"
RUNNER_FAULTS = "tests/service/test_runner_faults.py"
SCHEDULER_KUBE = "tests/service/test_scheduler_kube.py"
SCHEDULER_SERVICE = "tests/service/test_scheduler_service.py"
TRIGGERS = "tests/service/test_triggers.py"
FIRING = "tests/service/test_firing.py"
CLI_TRIGGERS = "tests/e2e/test_cli_triggers.py"
LIVE = "tests/e2e/test_live.py"
HTTP = "tests/e2e/test_http.py"
HEALTH = "tests/e2e/test_health.py"
CHART = "tests/unit/test_chart.py"
LOCK = "tests/unit/test_lock.py"
HTTP_TRIGGERS = "tests/e2e/test_http_triggers.py"
SCHEDULER = "tests/service/test_scheduler_local.py"
SCHEDULER_CRASH = "tests/e2e/test_scheduler_crash.py"
TICK_BATCH = "tests/service/test_tick_batch.py"
STARTS = "tests/service/test_starts.py"
WEB_UI = "tests/e2e/test_webui.py"
OPENAPI_COMMITTED = "tests/unit/test_openapi_committed.py"
BROWSER_RUNS = "tests/browser/test_runs.py"
BROWSER_JOB = "tests/browser/test_job_page.py"

MUTATIONS = (
    Mutation(
        "job-page-items-not-live",
        "a fan-out's items on the job page follow the job's websocket events",
        "ui/src/pages/FanoutItems.tsx",
        "process={withLive(child, live)}",
        "process={child}",
        (BROWSER_JOB,),
        browser=True,
    ),
    Mutation(
        "job-page-skips-an-item",
        "the job page pages through a fan-out's items in item order, none left out",
        "ui/src/pages/FanoutItems.tsx",
        "setAfters((a) => [...a, next])",
        "setAfters((a) => [...a, next + 1])",
        (BROWSER_JOB,),
        browser=True,
    ),
    Mutation(
        "job-page-no-input",
        "the job page shows each process's input",
        "ui/src/pages/ProcessRow.tsx",
        '<td>{"input" in p ? <Collapsed what="input" value={p.input} of={name} /> : null}</td>',
        "<td />",
        (BROWSER_RUNS,),
        browser=True,
    ),
    Mutation(
        "graph-forgets-measured-sizes",
        "a graph's nodes and edges stay drawn while the draft is edited and statuses change",
        "ui/src/graph/WorkflowGraph.tsx",
        "        onNodesChange={keepSizes}\n",
        "",
        (BROWSER_RUNS,),
        browser=True,
    ),
    Mutation(
        "graph-waits-for-measurement",
        "a graph's nodes are drawn at once, before the browser measures them",
        "ui/src/graph/WorkflowGraph.tsx",
        "      initialWidth: WIDTH,\n      initialHeight: HEIGHT,\n",
        "",
        (BROWSER_RUNS,),
        browser=True,
    ),
    Mutation(
        "dark-theme-low-contrast",
        "the dark theme's text has enough contrast (axe runs in both themes)",
        "ui/src/styles.css",
        "    --link: #8ab8ff;\n",
        "    --link: #0b57b0;\n",
        (BROWSER_RUNS,),
        browser=True,
    ),
    Mutation(
        "web-ui-no-deep-links",
        "a deep link into the web UI loads the app, whose router draws the page",
        "gateway/http/webui.py",
        "            response = await super().get_response(\"index.html\", scope)\n",
        "            raise\n",
        (WEB_UI,),
    ),
    Mutation(
        "web-ui-shadows-the-api",
        "the web UI never answers in place of an API path",
        "gateway/http/webui.py",
        "PREFIX = \"/ui\"",
        "PREFIX = \"\"",
        (WEB_UI,),
    ),
    Mutation(
        "openapi-document-changed",
        "the UI's committed OpenAPI document (and so its types) follows the API",
        "gateway/http/app.py",
        "Projects, workflows and their versions,",
        "Projects, workflows and versions,",
        (OPENAPI_COMMITTED,),
    ),
    Mutation(
        "inbox-ignored",
        "no doubled effect: a message seen before is not run again",
        "autostep/runs.py",
        "    if not found.fresh:\n        return False\n",
        "",
        (EXACTLY_ONCE, "tests/service/test_delivery.py", DISPATCH),
    ),
    Mutation(
        "group-claims-ignore-inbox",
        "no doubled effect in a group: a message seen before is not run again",
        "autostep/runs.py",
        "        else claim.fresh\n        and claim.attempt == attempt\n",
        "        else claim.attempt == attempt\n",
        (GROUP,),
    ),
    Mutation(
        "group-failure-keeps-its-writes",
        "group commit: a failing function's writes roll back with its savepoint",
        "autostep/functions/group.py",
        '            _driver(connection).execute(f"ROLLBACK TO SAVEPOINT {SAVEPOINT_NAME}")\n',
        "            pass\n",
        (GROUP,),
    ),
    Mutation(
        "group-without-savepoint",
        "group commit: a savepoint is taken before a function's first statement",
        "autostep/functions/group.py",
        '        cursor.connection.execute(f"SAVEPOINT {SAVEPOINT_NAME}")\n',
        "",
        (GROUP,),
    ),
    Mutation(
        "group-locks-in-arrival-order",
        "group commit: groups lock jobs in one order and cannot deadlock each other",
        "autostep/completion.py",
        "    FROM job WHERE id IN (SELECT job_id FROM process WHERE id = ANY(%(ids)s))\n"
        "    ORDER BY id\n",
        "    FROM job WHERE id IN (SELECT job_id FROM process WHERE id = ANY(%(ids)s))\n"
        "    ORDER BY array_position(%(ids)s::uuid[],\n"
        "        (SELECT min(p.id::text)::uuid FROM process AS p\n"
        "         WHERE p.job_id = job.id AND p.id = ANY(%(ids)s)))\n",
        (GROUP,),
    ),
    Mutation(
        "batch-counts-one-child-per-parent",
        "group commit: fan-out children completed together each count their parent down",
        "autostep/completion.py",
        "            self.parents[process.parent_id] = self.parents.get(process.parent_id, 0)"
        " + 1\n",
        "            self.parents[process.parent_id] = 1\n",
        (GROUP,),
    ),
    Mutation(
        "batch-joins-for-each-child",
        "group commit: a fan-out whose children complete together is joined once",
        "autostep/completion.py",
        "        last = what is Completed.DONE and batch.last_child.get(process.parent_id)"
        " == index\n",
        "        last = what is Completed.DONE and process.parent_id is not None\n",
        (GROUP,),
    ),
    Mutation(
        "group-failure-not-recorded",
        "group commit: a failing function's attempt is retried or failed, as alone",
        "autostep/functions/group.py",
        "        retrying = runs.fail_attempt(\n",
        "        retrying = True or runs.fail_attempt(\n",
        (GROUP,),
    ),
    Mutation(
        "group-commits-half",
        "group commit: a group whose transaction breaks commits nothing",
        "autostep/functions/group.py",
        "                        outcomes.append(result)\n",
        "                        outcomes.append(result)\n"
        "                session.commit()\n",
        (GROUP,),
    ),
    Mutation(
        "eager-step-leaves-its-row",
        "a step run straight from its outbox row deletes the row with its claim",
        "autostep/inbox.py",
        "    consumed AS (DELETE FROM outbox WHERE id = %(consumed)s)",
        "    consumed AS (SELECT %(consumed)s::uuid)",
        ("tests/service/test_eager.py",),
    ),
    Mutation(
        "direct-steps-not-in-outbox",
        "no lost step: a step message the runner publishes itself is in the outbox too",
        "autostep/outbox.py",
        "        self._steps.append(row)\n",
        "        if not direct:\n            self._steps.append(row)\n",
        (DISPATCH, "tests/service/test_eager.py"),
    ),
    Mutation(
        "dispatcher-never-deletes",
        "a step message the runner published is not published again by the relay",
        "autostep/dispatch.py",
        '        self._db.execute(DELETE, {"ids": ids})\n',
        "",
        (DISPATCH,),
    ),
    Mutation(
        "claim-without-skip-locked",
        "two claims never take the same row nor wait for each other",
        "autostep/relay.py",
        "        ORDER BY seq LIMIT %(limit)s\n        FOR UPDATE SKIP LOCKED)",
        "        ORDER BY seq LIMIT %(limit)s)",
        (RELAY,),
    ),
    Mutation(
        "completion-without-row-lock",
        "per-job order: a job's transactions commit one after another",
        "autostep/completion.py",
        "    ORDER BY id\n    FOR UPDATE)",
        "    ORDER BY id)",
        (ORDERING,),
    ),
    Mutation(
        "process-locked-before-its-job",
        "one lock order (the job, then its processes): no deadlock",
        "autostep/completion.py",
        "        cursor.execute(_LOCK, {\"ids\": ids}, prepare=True)\n",
        "        cursor.execute(\"SELECT 1 FROM process WHERE id = ANY(%s) FOR UPDATE\",\n"
        "                       (ids,))\n"
        "        cursor.execute(_LOCK, {\"ids\": ids}, prepare=True)\n",
        (JOB_CONTROL,),
    ),
    Mutation(
        "cancel-keeps-queued-messages",
        "cancel withdraws the unsent step messages of what it cancels",
        "autostep/runs.py",
        "    withdraw_steps(session, [row.id for row in rows])\n",
        "",
        (JOB_CONTROL,),
    ),
    Mutation(
        "rerun-runs-succeeded-steps-again",
        "a rerun never runs a step that succeeded again",
        "autostep/runs.py",
        "        if process.status == ProcessStatus.SUCCEEDED:\n"
        "            copy = _reused(job, process)",
        "        if False:\n            copy = _reused(job, process)",
        (JOB_CONTROL,),
    ),
    Mutation(
        "no-step-budget",
        "a loop that never ends is stopped by the step budget",
        "autostep/completion.py",
        "    if steps >= version.max_steps:\n",
        "    if False:\n",
        (JOB_CONTROL,),
    ),
    Mutation(
        "no-shard-ownership",
        "per-job order: one relay publishes a job's rows",
        "autostep/relay.py",
        '            "shards": sorted(self.shards),\n            "limit"',
        '            "shards": list(range(SHARDS)),\n            "limit"',
        (ORDERING,),
    ),
    Mutation(
        "retry-delay-zero",
        "bounded retries wait as the backoff says",
        "autostep/functions/runner.py",
        "    return policy.delay(attempt)",
        "    return 0.0",
        (FAILURES,),
    ),
    Mutation(
        "retry-after-ignored",
        "a retry waits as long as the function (or Retry-After) asks",
        "autostep/functions/runner.py",
        "    if isinstance(exc, RetryableError) and exc.delay is not None:\n"
        "        return exc.delay\n",
        "",
        (FAILURES,),
    ),
    Mutation(
        "siblings-not-cancelled",
        "a failed job stops: its unfinished processes are cancelled",
        "autostep/runs.py",
        "    unfinished = [ProcessStatus.QUEUED, ProcessStatus.RUNNING]\n",
        "    return\n    unfinished = [ProcessStatus.QUEUED, ProcessStatus.RUNNING]\n",
        (FAILURES,),
    ),
    Mutation(
        "outage-acks-and-drops",
        "never ack-and-drop: a database outage holds the message",
        "autostep/functions/entrypoint.py",
        "            _OUTAGE.lost(str(exc))\n",
        "            return Disposition.ACK\n",
        (RUNNER_FAULTS,),
    ),
    Mutation(
        "outage-uses-deliveries",
        "a database outage costs no delivery: the message is held, not requeued",
        "autostep/functions/entrypoint.py",
        "            _OUTAGE.lost(str(exc))\n",
        "            eventlet.sleep(REQUEUE_PAUSE_SECONDS)\n"
        "            return Disposition.REQUEUE\n",
        (RUNNER_FAULTS,),
    ),
    Mutation(
        "lost-connection-held-forever",
        "a message that always loses its connection is dead-lettered in the end",
        "autostep/functions/entrypoint.py",
        "                if lost_while_answering > LOST_CONNECTION_RETRIES:\n",
        "                if False:\n",
        (FAILURES,),
    ),
    Mutation(
        "returned-message-confirmed",
        "a step message returned as unroutable stays in the outbox, though its ack follows",
        "autostep/confirmed.py",
        "            elif row_id not in batch.failed:  # a return comes before its ack\n",
        "            else:\n",
        (RELAY,),
    ),
    Mutation(
        "start-input-misfit-unrefused",
        "an input the start step cannot take is refused with a problem naming input",
        "autostep/runs.py",
        '        raise InvalidInput(f"the start step cannot take it: {exc}", field="input")'
        " from None\n",
        "        raise\n",
        (f"{HTTP}::test_bad_input_answers_a_problem_naming_the_field_and_writes_nothing",),
    ),
    Mutation(
        "tend-reads-past-heartbeat",
        "tending an idle broker connection reads its heartbeats and waits for nothing more",
        "autostep/confirmed.py",
        "                conn.blocking_read(timeout=TICK_SECONDS)\n",
        "                conn.drain_events(timeout=TICK_SECONDS)\n",
        (
            f"{RELAY}::test_tending_an_idle_broker_connection_reads_its_heartbeats"
            "_and_waits_for_nothing_more",
        ),
    ),
    Mutation(
        "publication-written-per-message",
        "a publication's messages leave in one socket write, in order",
        "autostep/confirmed.py",
        "        with corked(conn.transport):\n",
        "        with contextlib.nullcontext():\n",
        (RELAY,),
    ),
    Mutation(
        "group-acks-written-per-message",
        "a group's acks leave in one socket write",
        "autostep/functions/entrypoint.py",
        "            with _settled_together([message for _, message in group.taken]):\n",
        "            with contextlib.nullcontext():\n",
        (GROUP,),
    ),
    Mutation(
        "events-rows-left-unrouted",
        "rows of events written before the upgrade reach their followers after it",
        "autostep/migrations/versions/0007_events_one_message.py",
        "        \"WHERE type = 'events' AND routing_key = ''\"\n",
        "        \"WHERE false\"\n",
        (RELAY,),
    ),
    Mutation(
        "events-message-drops-events",
        "a transaction's events go out as one message, in seq order",
        "autostep/relay.py",
        "SELECT id, seq, exchange, mandatory, attempts, type, routing_key, "
        "payload::text AS body,\n",
        "SELECT id, seq, exchange, mandatory, attempts, type, routing_key,\n"
        "       (payload -> 0)::text AS body,\n",
        (RELAY, "tests/service/test_delivery.py"),
    ),
    Mutation(
        "hub-routes-first-event-only",
        "the gateway routes every event of a transaction's message to the websocket",
        "gateway/events_hub.py",
        "        for event_type, payload in typed:\n",
        "        for event_type, payload in typed[:1]:\n",
        (LIVE,),
    ),
    Mutation(
        "killed-worker-goes-on",
        "a worker killed while it waits for its running mark records no failure",
        "autostep/functions/runner.py",
        "        for marker in marking:  # started: let it finish\n",
        "        with __import__('contextlib').suppress(\n"
        "            __import__('greenlet').GreenletExit\n"
        "        ):\n"
        "          for marker in marking:\n",
        (RUNNER_FAULTS,),
    ),
    Mutation(
        "held-through-stop",
        "a runner that stops gives a message held through an outage back",
        "autostep/functions/entrypoint.py",
        "            headers=message.headers or {},\n"
        "            queue=self.queue.name,\n"
        "            stopping=lambda: self.stopping,\n",
        "            headers=message.headers or {},\n"
        "            queue=self.queue.name,\n"
        "            stopping=lambda: False,\n",
        (RUNNER_FAULTS,),
    ),
    Mutation(
        "deadlock-is-an-outage",
        "a deadlock runs the step again at once, with one log line",
        "autostep/db.py",
        "        if sqlstate in TRANSACTION_CONFLICTS:\n",
        "        if False:\n",
        (RUNNER_FAULTS,),
    ),
    Mutation(
        "ack-error-kills-runner",
        "an ack on a dropped broker connection never kills the runner",
        "autostep/functions/entrypoint.py",
        "    except _BROKER_CONNECTION_ERRORS as exc:\n",
        "    except AMQPError as exc:\n",
        (RUNNER_FAULTS,),
    ),
    Mutation(
        "undecodable-dropped",
        "a body that is not JSON is dead-lettered, not dropped",
        "autostep/functions/entrypoint.py",
        "    def on_decode_error(self, message: Any, exc: Exception) -> None:\n",
        "    def _on_decode_error(self, message: Any, exc: Exception) -> None:\n",
        (RUNNER_FAULTS,),
    ),
    Mutation(
        "unbounded-stop",
        "SIGTERM stops a runner within its stop timeout",
        "autostep/nameko_runtime.py",
        "        stop_within(runner, get_settings().stop_timeout_seconds)\n",
        "        runner.stop()\n",
        (RUNNER_FAULTS,),
    ),
    Mutation(
        "no-delivery-limit",
        "a message that keeps failing is dead-lettered, and its job fails",
        "autostep/topology.py",
        '        "x-delivery-limit": get_settings().delivery_limit,\n',
        "",
        (FAILURES,),
    ),
    Mutation(
        "leases-never-expire",
        "rows a vanished relay claimed are published once its lease runs out",
        "autostep/relay.py",
        "      AND (lease_until IS NULL OR lease_until < now())",
        "      AND lease_until IS NULL",
        (RELAY,),
    ),
    Mutation(
        "delete-ignores-lease",
        "a relay whose lease ran out leaves the rows to their new claimant",
        "autostep/relay.py",
        'DELETE = "DELETE FROM outbox WHERE id = ANY(%(ids)s) AND lease_token = %(token)s"',
        'DELETE = "DELETE FROM outbox WHERE id = ANY(%(ids)s)"',
        (RELAY,),
    ),
    Mutation(
        "takeover-keeps-stale-leases",
        "a relay taking a shard over publishes its previous owner's claims at once, in order",
        "autostep/relay.py",
        "        if taken:\n            db.execute(RELEASE_TAKEN_OVER",
        "        if False:\n            db.execute(RELEASE_TAKEN_OVER",
        (RELAY,),
    ),
    Mutation(
        "relay-deaf-while-idle",
        "an idle relay notices a broker connection that ended, and reconnects",
        "autostep/relay.py",
        "    def tend_broker(self) -> None:\n",
        "    def tend_broker(self) -> None:\n        return\n",
        (RELAY,),
    ),
    Mutation(
        "relay-without-heartbeats",
        "an idle relay notices a broker connection that went silent, and reconnects",
        "autostep/relay.py",
        "heartbeat=self.settings.relay_heartbeat_seconds,",
        "heartbeat=0,",
        (RELAY,),
    ),
    Mutation(
        "failed-publication-keeps-claim",
        "rows of a failed publication go out at once, not after their lease",
        "autostep/relay.py",
        "                self.release_failed(claim)\n",
        "                pass\n",
        (RELAY,),
    ),
    Mutation(
        "relay-slow-reconnect",
        "a relay is back within seconds of its broker's return",
        "autostep/relay.py",
        "self.stopping.wait(pause)\n                delay = min(delay * 2, RECONNECT_MAX_SECONDS)",
        "self.stopping.wait(delay)\n                delay = min(delay * 2, 15.0)",
        (RELAY,),
    ),
    Mutation(
        "relay-unbounded-connect",
        "SIGTERM stops a relay within seconds while a server does not answer",
        "autostep/relay.py",
        "            connect_timeout=math.ceil(CONNECT_TIMEOUT_SECONDS),\n",
        "",
        (RELAY,),
    ),
    Mutation(
        "queue-arguments-wedge-relay",
        "a step queue that exists with other arguments is published to as it is",
        "autostep/topology.py",
        "    except amqp.exceptions.PreconditionFailed as exc:\n",
        "    except ZeroDivisionError as exc:\n",
        (RELAY,),
    ),
    Mutation(
        "scheduler-trusts-label-selector",
        "a CronJob without autostep's managed-by label is never changed nor deleted",
        "autostep/scheduler/reconcile.py",
        '        if _labels(item).get("app.kubernetes.io/managed-by") != MANAGED_BY:\n'
        "            continue\n",
        "",
        (SCHEDULER_KUBE,),
    ),
    Mutation(
        "scheduler-takes-foreign-name",
        "a CronJob of another owner under a trigger's name is left alone",
        "autostep/scheduler/reconcile.py",
        "        if not ours or labels.get(TRIGGER_ID_LABEL)",
        "        if False and labels.get(TRIGGER_ID_LABEL)",
        (SCHEDULER_KUBE,),
    ),
    Mutation(
        "scheduler-compares-whole-objects",
        "an unchanged resync writes nothing, though the API server adds its own fields",
        "autostep/scheduler/reconcile.py",
        "    if isinstance(want, dict):\n"
        "        return isinstance(have, dict) and all(",
        "    if isinstance(want, dict):\n"
        "        return isinstance(have, dict) and set(want) == set(have) and all(",
        (SCHEDULER_KUBE,),
    ),
    Mutation(
        "scheduler-reads-each-cronjob",
        "an unchanged resync is one list call",
        "autostep/scheduler/reconcile.py",
        "            elif _differs(manifest, current):\n",
        "            elif _differs(manifest, client.read(namespace, _name(current)) or {}):\n",
        (SCHEDULER_KUBE,),
    ),
    Mutation(
        "scheduler-always-patches",
        "a resync, and a run after an interrupted one, write only what differs",
        "autostep/scheduler/reconcile.py",
        "            elif _differs(manifest, current):\n",
        "            elif True:\n",
        (SCHEDULER_KUBE,),
    ),
    Mutation(
        "scheduler-keeps-deleted-triggers",
        "the CronJob of a deleted trigger is deleted",
        "autostep/scheduler/reconcile.py",
        "    for item in [*actual.values(), *surplus]:\n",
        "    for item in [*surplus]:\n",
        (SCHEDULER_KUBE,),
    ),
    Mutation(
        "scheduler-create-conflict-fails",
        "a CronJob another replica created meanwhile is patched, not reported failed",
        "autostep/scheduler/reconcile.py",
        "        except ConflictError:\n            existing = ",
        "        except ZeroDivisionError:\n            existing = ",
        (SCHEDULER_KUBE,),
    ),
    Mutation(
        "scheduler-no-backoff",
        "an API server that is away is waited for, then the reconciliation goes on",
        "autostep/scheduler/reconcile.py",
        "            except ClusterUnavailable as exc:\n",
        "            except ZeroDivisionError as exc:\n",
        (SCHEDULER_KUBE,),
    ),
    Mutation(
        "scheduler-unbounded-backoff",
        "the scheduler's backoff delay is capped",
        "autostep/scheduler/reconcile.py",
        "                delay = min(delay * 2, self.maximum)\n",
        "                delay = delay * 2\n",
        (SCHEDULER_KUBE,),
    ),
    Mutation(
        "scheduler-ignores-enabled",
        "a disabled trigger's CronJob is suspended",
        "autostep/scheduler/cronjobs.py",
        '            "suspend": not target.enabled,\n',
        '            "suspend": False,\n',
        (SCHEDULER_KUBE,),
    ),
    Mutation(
        "scheduler-deaf-to-events",
        "a trigger written through the core reaches the cluster without waiting for a resync",
        "autostep/scheduler/service.py",
        "    def on_trigger_changed(self, body: Any) -> None:\n        self._sync()\n",
        "    def on_trigger_changed(self, body: Any) -> None:\n        pass\n",
        (SCHEDULER_SERVICE,),
    ),
    Mutation(
        "scheduler-keeps-old-deadline",
        "a starting deadline removed from a trigger is removed from its CronJob",
        "autostep/scheduler/reconcile.py",
        "    if want is None:\n        return have is None\n",
        "    if want is None:\n        return True\n",
        (SCHEDULER_KUBE,),
    ),
    Mutation(
        "tick-fired-again",
        "a cron tick starts at most one run, however often it is fired",
        "autostep/firing.py",
        "outcome=TickOutcome.SKIPPED)\n        .on_conflict_do_nothing()\n",
        "outcome=TickOutcome.SKIPPED)\n"
        "        .on_conflict_do_update(\n"
        "            index_elements=['trigger_id', 'scheduled_at'], set_={'outcome': 'skipped'}\n"
        "        )\n",
        (FIRING,),
    ),
    Mutation(
        "tick-without-trigger-lock",
        "the ticks of one trigger are handled one at a time (forbid holds under races)",
        "autostep/triggers.py",
        "    trigger = session.get(Trigger, key, with_for_update=lock, populate_existing=lock)\n",
        "    trigger = session.get(Trigger, key, populate_existing=lock)\n",
        (FIRING,),
    ),
    Mutation(
        "deadline-ignored",
        "a tick later than its starting deadline starts no run",
        "autostep/firing.py",
        "    if deadline is not None and late > deadline:\n",
        "    if deadline is not None and late > deadline * 100:\n",
        (FIRING,),
    ),
    Mutation(
        "forbid-ignored",
        "concurrency forbid: no tick starts while a run of the trigger runs",
        "autostep/firing.py",
        '    if config.concurrency == "forbid" and _running_jobs(session, trigger.id):\n',
        '    if config.concurrency == "forbid" and False:\n',
        (FIRING,),
    ),
    Mutation(
        "replace-without-cancel",
        "concurrency replace: the running run is cancelled before the new one starts",
        "autostep/firing.py",
        "                    for running in _running_jobs(session, trigger.id):\n",
        "                    for running in []:\n",
        (FIRING,),
    ),
    Mutation(
        "catch-up-oldest",
        "catch-up all fires the newest missed ticks, at most catch_up_limit",
        "autostep/firing.py",
        "        fire, reason = missed[-limit:], BEYOND_LIMIT\n",
        "        fire, reason = missed[:limit], BEYOND_LIMIT\n",
        (FIRING,),
    ),
    Mutation(
        "catch-up-before-active",
        "ticks before a trigger was created or enabled are never caught up",
        "autostep/firing.py",
        "    start = max(last_tick, since) if last_tick is not None else since\n",
        "    start = max(last_tick, since) if last_tick is not None else since - timedelta(1)\n",
        (FIRING,),
    ),
    Mutation(
        "disabled-trigger-fires",
        "a disabled trigger starts nothing",
        "autostep/firing.py",
        "    if not trigger.enabled:\n        return TickResult(",
        "    if False:\n        return TickResult(",
        (FIRING,),
    ),
    Mutation(
        "template-checked-late",
        "a bad trigger is refused before anything is written",
        "autostep/triggers.py",
        "    _check_template(kind, input_template)\n    found = get_workflow",
        "    found = get_workflow",
        (TRIGGERS,),
    ),
    Mutation(
        "trigger-change-unannounced",
        "every write of a trigger puts trigger.changed with a higher version into the outbox",
        "autostep/triggers.py",
        "    trigger.version += 1\n    trigger.updated_at = _now(session)\n    session.flush()\n"
        "    _announce(session, trigger)\n",
        "    trigger.updated_at = _now(session)\n    session.flush()\n",
        (TRIGGERS,),
    ),
    Mutation(
        "token-not-checked",
        "a webhook is started only with its current token",
        "autostep/triggers.py",
        "    return hmac.compare_digest(_hash(token), trigger.token_hash)\n",
        "    return True\n",
        (TRIGGERS,),
    ),
    Mutation(
        "async-read-outage-500",
        "a read on the gateway's event loop answers 503 while the database is down",
        "autostep/db.py",
        "    psycopg.OperationalError,\n    psycopg.InterfaceError,\n)",
        "    psycopg.InterfaceError,\n)",
        (f"{HTTP}::test_health_readiness_openapi_and_docs",),
    ),
    Mutation(
        "live-send-unbounded",
        "a websocket client that stops reading is closed (4008) even when few events follow",
        "gateway/live.py",
        "self.websocket.send_text(self._frames.popleft()), self.send_timeout",
        "self.websocket.send_text(self._frames.popleft()), None",
        (f"{LIVE}::test_a_client_that_stops_reading_is_closed_when_few_events_follow",),
    ),
    Mutation(
        "webhook-token-skipped",
        "a webhook call starts a run only with the trigger's current token",
        "autostep/webhooks.py",
        '    if trigger.kind != "webhook" or not triggers.check_token(trigger, token):\n',
        '    if trigger.kind != "webhook":\n',
        (HTTP_TRIGGERS,),
    ),
    Mutation(
        "webhook-unknown-id-found-out",
        "a webhook call without the token cannot tell which trigger ids exist",
        "autostep/webhooks.py",
        "    except NotFoundError:\n        raise Unauthenticated(REFUSED) from None\n",
        "    except NotFoundError:\n        raise\n",
        (HTTP_TRIGGERS,),
    ),
    Mutation(
        "webhook-idempotency-skipped",
        "a repeated Idempotency-Key on a webhook starts one job, even sent six times at once",
        "autostep/webhooks.py",
        "    return firing.start_run(session, trigger.id, variables, "
        "idempotency_key=idempotency_key)\n",
        "    return firing.start_run(session, trigger.id, variables)\n",
        (HTTP_TRIGGERS,),
    ),
    Mutation(
        "webhook-stores-before-checking",
        "a refused webhook call stores nothing",
        "autostep/webhooks.py",
        '    limit = trigger.config.get("max_body_bytes")\n',
        '    firing.start_run(session, trigger.id, {"body": {}, "headers": {}})\n'
        "    session.commit()\n"
        '    limit = trigger.config.get("max_body_bytes")\n',
        (HTTP_TRIGGERS,),
    ),
    Mutation(
        "union-tag-in-field-name",
        "a bad trigger over REST names the field as sent (config.schedule, not cron.config...)",
        "gateway/http/problems.py",
        "            path = _without_union_tags(path, exc.body, error)\n",
        "",
        (HTTP_TRIGGERS,),
    ),
    Mutation(
        "relay-loop-never-beats",
        "a running relay passes autostep health",
        "autostep/relay.py",
        "            health.beat(\"relay\", self.settings.health_dir)\n"
        "            self.tend_broker()\n",
        "            self.tend_broker()\n",
        (HEALTH,),
    ),
    Mutation(
        "runtime-never-beats",
        "a running gateway RPC process passes autostep health",
        "autostep/nameko_runtime.py",
        "        health.beat(component)\n",
        "        pass\n",
        (HEALTH,),
    ),
    Mutation(
        "health-ignores-age",
        "a frozen worker fails autostep health after --max-age",
        "autostep/health.py",
        "        if age is None or age > max_age\n",
        "        if age is None\n",
        (HEALTH,),
    ),
    Mutation(
        "role-grants-more",
        "the chart's Role grants exactly the CronJob verbs the scheduler calls",
        "charts/autostep/templates/scheduler/rbac.yaml",
        "    verbs: [create, delete, get, list, patch]\n",
        "    verbs: [create, delete, get, list, patch, update, watch]\n",
        (CHART,),
    ),
    Mutation(
        "scheduler-forgets-pull-secrets",
        "the CronJobs carry the chart's image pull secrets",
        "scheduler/cronjobs.py",
        "        pod_spec[\"imagePullSecrets\"] = [{\"name\": name} for name in pull_secrets]\n",
        "        pass\n",
        (CHART,),
    ),
    Mutation(
        "writable-root-filesystem",
        "every pod of the chart runs with a read-only root filesystem",
        "charts/autostep/values.yaml",
        "  readOnlyRootFilesystem: true\n",
        "  readOnlyRootFilesystem: false\n",
        (CHART,),
    ),
    Mutation(
        "migrations-not-a-hook",
        "migrations run as a pre-install,pre-upgrade hook, after the Secret",
        "charts/autostep/templates/migrations/job.yaml",
        '    helm.sh/hook-weight: "0"\n',
        '    helm.sh/hook-weight: "-20"\n',
        (CHART,),
    ),
    Mutation(
        "values-schema-allows-typos",
        "a typo in values fails the install naming the key",
        "charts/autostep/values.schema.json",
        '  "additionalProperties": false,\n  "properties": {\n    "global"',
        '  "properties": {\n    "global"',
        (CHART,),
    ),
    Mutation(
        "lock-goes-stale",
        "pyproject.toml asking for what the lock does not have fails the tests",
        "pyproject.toml",
        '    "croniter>=6,<8",',
        '    "croniter>=9",',
        (LOCK,),
    ),
    Mutation(
        "local-scheduler-never-beats",
        "autostep health scheduler passes while the local scheduler's loop turns",
        "scheduler/local.py",
        '                health.beat("scheduler")',
        "                pass",
        (f"{HEALTH}::test_running_worker_passes_and_a_frozen_one_fails",),
    ),
    Mutation(
        "tick-job-committed-alone",
        "a tick's row and its job commit together: a crash leaves both or neither",
        "autostep/tick_batch.py",
        "    with driver(session).cursor() as cursor:\n"
        "        cursor.execute(_WRITE, params, prepare=True)\n",
        "    dsn = driver(session).info.dsn\n"
        "    with __import__('psycopg').connect(dsn, autocommit=True) as alone:\n"
        "        alone.execute(_WRITE, {**params, 'ticks': Jsonb([])})\n"
        "    params.update(jobs=Jsonb([]), born=Jsonb([]), outbox=Jsonb([]))\n"
        "    with driver(session).cursor() as cursor:\n"
        "        cursor.execute(_WRITE, params, prepare=True)\n",
        (
            f"{TICK_BATCH}::test_a_batch_rolled_back_leaves_neither_ticks_nor_jobs",
            SCHEDULER_CRASH,
        ),
    ),
    Mutation(
        "batch-fires-again",
        "a tick fired in a batch starts at most one run, however often it is fired",
        "autostep/tick_batch.py",
        "        .on_conflict_do_nothing()\n",
        "        .on_conflict_do_update(\n"
        "            index_elements=['trigger_id', 'scheduled_at'], set_={'outcome': 'skipped'}\n"
        "        )\n",
        (TICK_BATCH,),
    ),
    Mutation(
        "batch-forbid-ignored",
        "concurrency forbid holds in a batch: against runs in flight, earlier ticks of the batch",
        "autostep/tick_batch.py",
        '        if reason is None and config.concurrency == "forbid" and trigger.id in running:\n',
        "        if reason is None and False:\n",
        (TICK_BATCH,),
    ),
    Mutation(
        "batch-forbid-forgets-the-batch",
        "under forbid, the run an earlier tick of the batch started counts as running",
        "autostep/tick_batch.py",
        "                running.add(trigger.id)\n",
        "                pass\n",
        (TICK_BATCH,),
    ),
    Mutation(
        "batch-deadline-ignored",
        "a tick fired in a batch later than its starting deadline starts no run",
        "autostep/tick_batch.py",
        "        elif (late := late_reason(config, at, now)) is not None:\n",
        "        elif (late := late_reason(config, at, at)) is not None:\n",
        (TICK_BATCH,),
    ),
    Mutation(
        "batch-disabled-fires",
        "a disabled trigger starts nothing in a batch",
        "autostep/tick_batch.py",
        "        elif not trigger.enabled:\n",
        "        elif False:\n",
        (TICK_BATCH,),
    ),
    Mutation(
        "batch-archived-fires",
        "a tick fired in a batch starts no run of an archived workflow",
        "autostep/tick_batch.py",
        "            refused[workflow_id] = str(exc)\n",
        "            pass\n",
        (TICK_BATCH,),
    ),
    Mutation(
        "batch-template-failure-aborts",
        "a failing template records the tick skipped with why, in a batch too",
        "autostep/tick_batch.py",
        "            except (InvalidInput, PermanentError) as exc:\n",
        "            except ZeroDivisionError as exc:\n",
        (TICK_BATCH,),
    ),
    Mutation(
        "batch-replace-in-bulk",
        "concurrency replace cancels the running run in a batch too",
        "autostep/tick_batch.py",
        '    if trigger.config.get("concurrency") == "replace":\n',
        "    if False:\n",
        (TICK_BATCH,),
    ),
    Mutation(
        "lean-start-differs",
        "a run started in two statements is stored as the ORM path stores it",
        "autostep/starts.py",
        '                "steps": started.steps,\n',
        '                "steps": job.steps,\n',
        (STARTS,),
    ),
    Mutation(
        "start-without-share-lock",
        "archiving waits for a run being started, then sees it in flight",
        "autostep/catalog.py",
        "FOR SHARE OF w\n",
        "\n",
        (STARTS,),
    ),
    Mutation(
        "scheduler-catch-up-forgets-downtime",
        "the local scheduler catches up the ticks missed while it was down, from the last recorded",
        "scheduler/local.py",
        "plan_ticks(CronConfig.model_validate(config), last_at, since, now)",
        "plan_ticks(CronConfig.model_validate(config), now - timedelta(minutes=1), since, now)",
        (SCHEDULER, SCHEDULER_CRASH),
    ),
    Mutation(
        "scheduler-catch-up-in-one-transaction",
        "each round of a catch-up commits on its own: a crash mid-way keeps the ticks fired",
        "scheduler/local.py",
        "                self._fire_round(session, plans, 0, results, now)\n"
        "            rounds = max((len(plan.fire) for plan in plans.values()), default=0)\n"
        "            for n in range(1, rounds):\n",
        "                for n in range(max((len(p.fire) for p in plans.values()), default=0)):\n"
        "                    self._fire_round(session, plans, n, results, now)\n"
        "            for n in range(0):\n",
        (
            f"{SCHEDULER}::test_a_catch_up_cut_short_keeps_the_rounds_that_committed",
            SCHEDULER_CRASH,
        ),
    ),
    Mutation(
        "scheduler-no-leader-lock",
        "one local scheduler leads at a time",
        "scheduler/local.py",
        '"SELECT pg_try_advisory_lock(%s, 0)"',
        '"SELECT %s > 0"',
        (SCHEDULER,),
    ),
    Mutation(
        "scheduler-no-reload",
        "the local scheduler follows a changed or disabled trigger within a second",
        "scheduler/local.py",
        "            if fingerprint == self._fingerprint:\n",
        "            if self._fingerprint is not None:\n",
        (SCHEDULER,),
    ),
)


def _copy(tree: Path) -> None:
    shutil.copytree(
        ROOT,
        tree,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "__pycache__", ".*_cache", "*.egg-info", "node_modules"
        ),
    )


def _build_ui(tree: Path) -> None:
    """Build the web UI of ``tree`` from its sources, with the checkout's node_modules."""
    (tree / "ui" / "node_modules").symlink_to(ROOT / "ui" / "node_modules")
    subprocess.run(["npm", "run", "build"], cwd=tree / "ui", check=True, capture_output=True)


def _apply(tree: Path, mutation: Mutation) -> None:
    path = tree / mutation.path
    text = path.read_text()
    if text.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: the code to break is not in {mutation.path} once")
    path.write_text(text.replace(mutation.old, mutation.new))


def _pytest(
    tree: Path, tests: tuple[str, ...], *, browser: bool = False
) -> tuple[bool, float, str]:
    """Run ``tests`` in ``tree``; (passed, seconds, last lines of output)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    config = ("-c", "tests/browser/pytest.ini") if browser else ("-p", "no:cacheprovider")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", *config, *tests],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    tail = "\n".join(done.stdout.strip().splitlines()[-3:])
    return done.returncode == 0, time.monotonic() - started, tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--times", type=int, default=1, help="runs per breakage (1)")
    parser.add_argument("--only", default="", help="breakages whose name contains this")
    parser.add_argument("--clean", type=int, default=0, help="run the unbroken tests N times")
    parser.add_argument("--verbose", action="store_true", help="print pytest's last lines")
    args = parser.parse_args()

    chosen = [m for m in MUTATIONS if args.only in m.name]
    failures = 0
    with tempfile.TemporaryDirectory(prefix="autostep-mutations-") as scratch:
        if args.clean:
            tree = Path(scratch) / "clean"
            _copy(tree)
            for browser in (False, True):  # the browser tests run apart, with their own config
                tests = tuple(sorted({t for m in chosen if m.browser == browser for t in m.tests}))
                for run in range(1, args.clean + 1) if tests else ():
                    passed, seconds, tail = _pytest(tree, tests, browser=browser)
                    failures += not passed
                    outcome = "passed" if passed else "FAILED"
                    print(f"clean run {run}{' (browser)' * browser}: {outcome} in {seconds:.0f}s")
                    if args.verbose or not passed:
                        print(tail)
            return 1 if failures else 0
        print(f"{'breakage':30} {'caught':>7}  promise / tests")
        for mutation in chosen:
            tree = Path(scratch) / mutation.name
            _copy(tree)
            _apply(tree, mutation)
            if mutation.browser:
                _build_ui(tree)
            caught = 0
            for _ in range(args.times):
                passed, seconds, tail = _pytest(tree, mutation.tests, browser=mutation.browser)
                caught += not passed
                if args.verbose:
                    outcome = "passed" if passed else "failed"
                    print(f"  {mutation.name}: {outcome} in {seconds:.0f}s")
                    print("  " + tail.replace("\n", "\n  "))
            failures += caught < args.times
            print(f"{mutation.name:30} {caught:>3}/{args.times:<3}  {mutation.promise}")
            print(f"{'':30} {'':7}  {', '.join(mutation.tests)}", flush=True)
            shutil.rmtree(tree)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
