"""The Kubernetes scheduler backend against a fake API server, with the real client.

Cron targets become CronJobs, change, are suspended and vanish; CronJobs the
scheduler does not manage are never touched; an unchanged resync costs one
list call; a reconciliation cut off half-way is finished by the next one; an
API server that is away is waited for, with a bounded backoff.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from autostep.exceptions import ClusterUnavailable
from autostep.scheduler.cronjobs import CronTarget, cronjob_name, desired_cronjob
from autostep.scheduler.kube import KubeClient
from autostep.scheduler.reconcile import Backoff, reconcile
from autostep.settings import Settings
from tests.kube_fake import FakeApiServer, FakeCluster

NAMESPACE = "autostep-test"
SETTINGS = Settings(image="autostep:test")


@pytest.fixture(scope="module")
def api_server() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def cluster(api_server: FakeApiServer) -> Iterator[FakeCluster]:
    yield api_server.cluster
    api_server.cluster.unavailable = 0
    for key in list(api_server.cluster.objects):
        del api_server.cluster.objects[key]


@pytest.fixture
def client(api_server: FakeApiServer, cluster: FakeCluster) -> Iterator[KubeClient]:
    made = KubeClient.connect(host=api_server.url)
    yield made
    made.close()


def target(name: str = "nightly", **changes: Any) -> CronTarget:
    made = CronTarget(
        id=uuid.uuid4(),
        project_id=uuid.uuid4(),
        workflow_id=uuid.uuid4(),
        name=name,
        schedule="0 3 * * *",
        time_zone="UTC",
        concurrency="allow",
        starting_deadline_seconds=None,
        enabled=True,
        version=1,
    )
    return replace(made, **changes)


def manifests(targets: list[CronTarget]) -> list[dict[str, Any]]:
    return [desired_cronjob(t, SETTINGS) for t in targets]


def no_wait() -> Backoff:
    return Backoff(sleep=lambda seconds: None)


def test_targets_become_cronjobs_that_change_suspend_and_vanish(
    client: KubeClient, cluster: FakeCluster
) -> None:
    a, b = target("a"), target("b", time_zone="Europe/Paris", starting_deadline_seconds=60)
    summary = reconcile(client, manifests([a, b]), NAMESPACE, backoff=no_wait())
    assert (summary.created, summary.writes) == (2, 2)
    jobs = cluster.cronjobs(NAMESPACE)
    assert set(jobs) == {cronjob_name(a), cronjob_name(b)}
    assert jobs[cronjob_name(b)]["spec"]["timeZone"] == "Europe/Paris"
    assert jobs[cronjob_name(b)]["spec"]["startingDeadlineSeconds"] == 60

    a2 = replace(a, schedule="*/5 * * * *", version=2)
    b2 = replace(b, enabled=False, version=2)
    summary = reconcile(client, manifests([a2, b2]), NAMESPACE, backoff=no_wait())
    assert (summary.patched, summary.unchanged, summary.writes) == (2, 0, 2)
    jobs = cluster.cronjobs(NAMESPACE)
    assert jobs[cronjob_name(a)]["spec"]["schedule"] == "*/5 * * * *"
    assert jobs[cronjob_name(a)]["metadata"]["annotations"]["autostep.io/trigger-version"] == "2"
    assert jobs[cronjob_name(b)]["spec"]["suspend"] is True

    b3 = replace(b2, starting_deadline_seconds=None)  # the deadline alone goes
    summary = reconcile(client, manifests([a2, b3]), NAMESPACE, backoff=no_wait())
    assert (summary.patched, summary.unchanged) == (1, 1)
    assert "startingDeadlineSeconds" not in cluster.cronjobs(NAMESPACE)[cronjob_name(b)]["spec"]

    summary = reconcile(client, manifests([a2]), NAMESPACE, backoff=no_wait())
    assert (summary.deleted, summary.unchanged, summary.writes) == (1, 1, 1)
    assert set(cluster.cronjobs(NAMESPACE)) == {cronjob_name(a)}


def test_a_renamed_trigger_keeps_its_cronjob(client: KubeClient, cluster: FakeCluster) -> None:
    a = target("old-name")
    reconcile(client, manifests([a]), NAMESPACE, backoff=no_wait())
    summary = reconcile(
        client, manifests([replace(a, name="new-name")]), NAMESPACE, backoff=no_wait()
    )
    assert summary.writes == 0
    assert set(cluster.cronjobs(NAMESPACE)) == {cronjob_name(a)}


def test_unmanaged_cronjobs_are_never_touched(client: KubeClient, cluster: FakeCluster) -> None:
    mine = target("mine")
    squatter = target("squatted")
    foreign = desired_cronjob(target("foreign"), SETTINGS)
    foreign["metadata"]["labels"] = {"app": "someone-else"}
    # someone else's CronJob under the very name a trigger wants
    taken = desired_cronjob(squatter, SETTINGS)
    taken["metadata"]["labels"] = {"app": "someone-else"}
    taken["spec"]["schedule"] = "1 1 1 1 1"
    for body in (foreign, taken):
        client.create(NAMESPACE, body)
    before = {name: cluster.cronjobs(NAMESPACE)[name] for name in cluster.cronjobs(NAMESPACE)}

    summary = reconcile(client, manifests([mine, squatter]), NAMESPACE, backoff=no_wait())
    assert (summary.created, summary.failed) == (1, 1)
    reconcile(client, [], NAMESPACE, backoff=no_wait())  # every trigger deleted

    after = cluster.cronjobs(NAMESPACE)
    assert set(after) == set(before)
    for name, body in before.items():
        assert after[name]["spec"] == body["spec"]
        assert after[name]["metadata"]["labels"] == body["metadata"]["labels"]


def test_an_unchanged_resync_is_one_list_and_no_write(
    client: KubeClient, cluster: FakeCluster
) -> None:
    targets = [
        target(f"t{i}", concurrency="forbid", starting_deadline_seconds=30) for i in range(5)
    ]
    targets.append(target("off", enabled=False, time_zone="Asia/Tokyo"))
    reconcile(client, manifests(targets), NAMESPACE, backoff=no_wait())
    stored = next(iter(cluster.cronjobs(NAMESPACE).values()))
    assert stored["metadata"]["uid"]  # the server added its own fields
    assert stored["spec"]["jobTemplate"]["spec"]["template"]["spec"]["dnsPolicy"]

    client.calls.clear()
    summary = reconcile(client, manifests(targets), NAMESPACE, backoff=no_wait())
    assert dict(client.calls) == {"list": 1}
    assert (summary.unchanged, summary.writes) == (6, 0)


def test_a_create_that_finds_the_name_taken_by_ours_patches_it(
    api_server: FakeApiServer, cluster: FakeCluster
) -> None:
    """Another replica created the CronJob between our list and our create."""
    a = target("raced")
    stale = desired_cronjob(replace(a, schedule="7 7 * * *"), SETTINGS)

    class Raced(KubeClient):
        def list_managed(self, namespace: str, selector: str) -> list[dict[str, Any]]:
            listed = super().list_managed(namespace, selector)
            self.create(namespace, stale)
            return listed

    client = Raced.connect(host=api_server.url)
    summary = reconcile(client, manifests([a]), NAMESPACE, backoff=no_wait())
    assert (summary.patched, summary.failed) == (1, 0)
    assert cluster.cronjobs(NAMESPACE)[cronjob_name(a)]["spec"]["schedule"] == "0 3 * * *"
    client.close()


class Interrupted(Exception):
    """The scheduler died half-way."""


def test_a_reconciliation_cut_off_half_way_is_finished_by_the_next(
    api_server: FakeApiServer, cluster: FakeCluster
) -> None:
    old = [target(f"old{i}") for i in range(4)]
    first = KubeClient.connect(host=api_server.url)
    reconcile(first, manifests(old), NAMESPACE, backoff=no_wait())
    first.close()
    # change two, delete one, add three: 6 writes
    wanted = [replace(old[0], schedule="5 5 * * *", version=2), old[1], old[2]]
    wanted[2] = replace(old[2], enabled=False, version=2)
    wanted += [target(f"new{i}") for i in range(3)]

    class Dying(KubeClient):
        def _call(self, verb: str, what: str, method: Any, *a: Any, **kw: Any) -> Any:
            if verb != "list" and self.write_calls >= 3:
                raise Interrupted(what)
            return super()._call(verb, what, method, *a, **kw)

    dying = Dying.connect(host=api_server.url)
    with pytest.raises(Interrupted):
        reconcile(dying, manifests(wanted), NAMESPACE, backoff=no_wait())
    dying.close()

    second = KubeClient.connect(host=api_server.url)
    summary = reconcile(second, manifests(wanted), NAMESPACE, backoff=no_wait())
    assert summary.writes == 6 - 3  # only what the first run did not do
    assert (summary.created, summary.deleted, summary.unchanged) == (2, 1, 4)
    jobs = cluster.cronjobs(NAMESPACE)
    assert set(jobs) == {cronjob_name(t) for t in wanted}
    assert jobs[cronjob_name(old[0])]["spec"]["schedule"] == "5 5 * * *"
    assert jobs[cronjob_name(old[2])]["spec"]["suspend"] is True
    second.calls.clear()
    assert reconcile(second, manifests(wanted), NAMESPACE, backoff=no_wait()).writes == 0
    second.close()


def test_an_unavailable_api_server_is_waited_for_with_a_bounded_backoff(
    client: KubeClient, cluster: FakeCluster
) -> None:
    delays: list[float] = []
    backoff = Backoff(initial=0.5, maximum=2.0, attempts=6, sleep=delays.append)
    cluster.unavailable = 4  # the list is refused four times
    summary = reconcile(client, manifests([target("a"), target("b")]), NAMESPACE, backoff=backoff)
    assert summary.created == 2
    assert delays == [0.5, 1.0, 2.0, 2.0]  # doubling, capped
    assert len(cluster.cronjobs(NAMESPACE)) == 2

    cluster.unavailable = 100
    delays.clear()
    with pytest.raises(ClusterUnavailable):
        reconcile(client, manifests([target("c")]), NAMESPACE, backoff=backoff)
    assert len(delays) == backoff.attempts - 1
    cluster.unavailable = 0


def test_an_api_server_that_cannot_be_reached_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = KubeClient.connect(host=f"http://127.0.0.1:{port}")
    with pytest.raises(ClusterUnavailable, match="unreachable"):
        client.list_managed(NAMESPACE, "x=y")
    client.close()


@pytest.mark.skipif(
    not (os.environ.get("KUBECONFIG") and os.environ.get("AUTOSTEP_KUBE_E2E") == "1"),
    reason="needs a real cluster: set KUBECONFIG and AUTOSTEP_KUBE_E2E=1 "
    "(it creates and deletes CronJobs in the namespace AUTOSTEP_SCHEDULER_NAMESPACE)",
)
def test_against_a_real_cluster() -> None:
    namespace = os.environ.get("AUTOSTEP_SCHEDULER_NAMESPACE", "default")
    client = KubeClient.connect()
    targets = [target("e2e-a"), target("e2e-b", enabled=False, time_zone="Europe/Paris")]
    try:
        assert reconcile(client, manifests(targets), namespace).created == 2
        client.calls.clear()
        summary = reconcile(client, manifests(targets), namespace)
        assert (summary.writes, dict(client.calls)) == (0, {"list": 1})
    finally:
        assert reconcile(client, [], namespace).deleted >= 2
        client.close()
