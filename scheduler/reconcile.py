"""Makes the namespace's CronJobs match the desired ones: a level-based reconciliation.

Second stage of the Kubernetes backend, after :mod:`autostep.scheduler.cronjobs`
built one manifest per cron trigger. :func:`reconcile` lists the CronJobs
labelled ``app.kubernetes.io/managed-by=autostep`` once, pairs them with the
manifests by the ``autostep.io/trigger-id`` label, and then

- creates what is missing,
- merge-patches what differs in a field the manifest sets,
- deletes what no manifest asks for (a deleted trigger),
- leaves the rest alone: an unchanged resync is one list call and no write.

It keeps no state between runs, so a run that stopped half-way (the API
server went away, the process was killed) is finished by the next one.

Only the fields the manifest sets are compared: the API server adds its own
(``uid``, ``resourceVersion``, defaults such as ``dnsPolicy`` or a
container's ``terminationMessagePath``, ``status``) and those are no
difference. A ``None`` in the manifest means "absent". A CronJob's name is
fixed when it is created; a renamed trigger keeps its CronJob, found by the
trigger-id label.

A CronJob without the managed-by label is never changed nor deleted, even
when the server ignores the label selector (the list is filtered here too),
and even when its name is the one a trigger wants: that trigger is reported
as failed instead.

Unreachable API server (:class:`ClusterUnavailable`): each call is tried again
after a bounded exponential delay (:class:`Backoff`); when the attempts run
out the error goes up to the caller, who runs the whole reconciliation again
later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

from autostep.exceptions import ClusterUnavailable, ConflictError, InternalError, NotFoundError
from autostep.scheduler.cronjobs import MANAGED_BY, MANAGED_SELECTOR, TRIGGER_ID_LABEL

__all__ = ["Backoff", "CronJobApi", "Summary", "reconcile"]

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Times a create is tried when its name is taken and then freed again meanwhile.
CONFLICT_ATTEMPTS = 3


class CronJobApi(Protocol):
    """What :func:`reconcile` needs of a client (:class:`autostep.scheduler.kube.KubeClient`)."""

    def list_managed(self, namespace: str, selector: str) -> list[dict[str, Any]]: ...
    def read(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def merge_patch(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...
    def delete(self, namespace: str, name: str) -> bool: ...


@dataclass(frozen=True)
class Summary:
    """What one reconciliation did."""

    created: int = 0
    patched: int = 0
    deleted: int = 0
    unchanged: int = 0
    #: Triggers whose CronJob the server refused (logged one line each).
    failed: int = 0

    @property
    def writes(self) -> int:
        return self.created + self.patched + self.deleted


@dataclass(frozen=True)
class Backoff:
    """Tries a call again while the API server is unavailable: 0.5 s, 1 s, 2 s … at most 30 s."""

    initial: float = 0.5
    maximum: float = 30.0
    attempts: int = 6
    sleep: Callable[[float], None] = field(default=time.sleep)

    def run(self, call: Callable[[], T]) -> T:
        delay = self.initial
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except ClusterUnavailable as exc:
                if attempt == self.attempts:
                    raise
                log.warning("%s; trying again in %.1f s", exc, delay)
                self.sleep(delay)
                delay = min(delay * 2, self.maximum)
        raise AssertionError("unreachable")  # pragma: no cover


def reconcile(
    client: CronJobApi,
    desired: Iterable[dict[str, Any]],
    namespace: str,
    *,
    backoff: Backoff | None = None,
) -> Summary:
    """Make the managed CronJobs of ``namespace`` match ``desired`` (manifests)."""
    backoff = backoff or Backoff()
    listed = backoff.run(partial(client.list_managed, namespace, MANAGED_SELECTOR))
    actual: dict[str, dict[str, Any]] = {}
    surplus: list[dict[str, Any]] = []
    for item in sorted(listed, key=_name):
        if _labels(item).get("app.kubernetes.io/managed-by") != MANAGED_BY:
            continue
        trigger_id = _labels(item).get(TRIGGER_ID_LABEL)
        if trigger_id is None or trigger_id in actual:
            surplus.append(item)  # ours, but for no trigger or a second one for it
        else:
            actual[trigger_id] = item

    counts = {"created": 0, "patched": 0, "unchanged": 0, "failed": 0, "deleted": 0}
    for manifest in desired:
        current = actual.pop(_labels(manifest)[TRIGGER_ID_LABEL], None)
        try:
            if current is None:
                outcome = _create(client, namespace, manifest, backoff)
            elif _differs(manifest, current):
                patch = _patch(manifest)
                backoff.run(partial(client.merge_patch, namespace, _name(current), patch))
                outcome = "patched"
            else:
                outcome = "unchanged"
        except (ConflictError, NotFoundError, InternalError) as exc:
            trigger_id = _labels(manifest)[TRIGGER_ID_LABEL]
            log.error("CronJob of trigger %s not written: %s", trigger_id, exc)
            outcome = "failed"
        counts[outcome] += 1
        if outcome in ("created", "patched"):
            log.debug("%s CronJob %s/%s", outcome, namespace, _name(manifest))

    for item in [*actual.values(), *surplus]:
        if backoff.run(partial(client.delete, namespace, _name(item))):
            counts["deleted"] += 1
            log.debug("deleted CronJob %s/%s", namespace, _name(item))
    return Summary(**counts)


def _create(client: CronJobApi, namespace: str, manifest: dict[str, Any], backoff: Backoff) -> str:
    """Create the CronJob; when its name is taken by one of ours, patch that one instead."""
    name = _name(manifest)
    body = _without_nulls(manifest)
    for _ in range(CONFLICT_ATTEMPTS):
        try:
            backoff.run(partial(client.create, namespace, body))
            return "created"
        except ConflictError:
            existing = backoff.run(partial(client.read, namespace, name))
        if existing is None:
            continue  # deleted meanwhile: create it again
        labels = _labels(existing)
        ours = labels.get("app.kubernetes.io/managed-by") == MANAGED_BY
        if not ours or labels.get(TRIGGER_ID_LABEL) != _labels(manifest)[TRIGGER_ID_LABEL]:
            raise ConflictError(f"{namespace}/{name} is a CronJob of another owner")
        if not _differs(manifest, existing):
            return "unchanged"
        backoff.run(partial(client.merge_patch, namespace, name, _patch(manifest)))
        return "patched"
    raise ConflictError(f"CronJob {namespace}/{name} kept appearing and vanishing")


def _differs(manifest: dict[str, Any], current: dict[str, Any]) -> bool:
    meta, have = manifest["metadata"], current.get("metadata") or {}
    return not (
        _covers(meta.get("labels"), have.get("labels"))
        and _covers(meta.get("annotations"), have.get("annotations"))
        and _covers(manifest["spec"], current.get("spec"))
    )


def _covers(want: Any, have: Any) -> bool:
    """Whether ``have`` holds every value ``want`` sets (None: absent); extra keys are fine."""
    if want is None:
        return have is None
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_covers(v, have.get(k)) for k, v in want.items())
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(_covers(w, h) for w, h in zip(want, have, strict=True))
        )
    return bool(type(want) is type(have) and want == have)


def _patch(manifest: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that sets every field the manifest owns (the name cannot change)."""
    meta = manifest["metadata"]
    return {
        "metadata": {"labels": meta["labels"], "annotations": meta["annotations"]},
        "spec": manifest["spec"],
    }


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _labels(item: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = (item.get("metadata") or {}).get("labels") or {}
    return labels


def _name(item: dict[str, Any]) -> str:
    return str((item.get("metadata") or {}).get("name", ""))
