"""The scheduler's one door to the Kubernetes API: CronJobs, over ``BatchV1Api``.

:mod:`autostep.scheduler.reconcile` lists, creates, merge-patches and deletes
CronJobs through :class:`KubeClient` and nothing else; this is the only
module that imports the ``kubernetes`` client (an import-linter contract in
``pyproject.toml`` holds every other module to it). Objects travel as plain
``dict`` manifests, as the API server sends them, not as the client's
generated models, so what the scheduler compares is what the server stored.

Errors leave as autostep's own (:mod:`autostep.exceptions`):

- the server cannot be reached, times out, or answers 5xx or 429 →
  :class:`ClusterUnavailable` (the caller backs off and tries again);
- 409 on create (the name is taken) → :class:`ConflictError`;
- 404 on patch → :class:`NotFoundError`; 404 on delete is no error (gone is
  what was asked for);
- any other refusal (403 for missing RBAC, 422 for a manifest the server
  finds invalid) → :class:`InternalError`, with the server's message.

Every call is counted in :attr:`KubeClient.calls` by verb, for tests and the
benchmark.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from autostep.exceptions import ClusterUnavailable, ConflictError, InternalError, NotFoundError

__all__ = ["KubeClient"]

#: Seconds to connect, and to wait for an answer, on every call.
TIMEOUT = (5.0, 30.0)
_MERGE_PATCH = "application/merge-patch+json"


class KubeClient:
    """List, create, merge-patch and delete CronJobs in a namespace."""

    def __init__(self, api_client: Any, *, timeout: tuple[float, float] = TIMEOUT) -> None:
        self._batch = client.BatchV1Api(api_client)
        self._api_client = api_client
        self._timeout = timeout
        #: Calls made, by verb: ``list``, ``read``, ``create``, ``patch``, ``delete``.
        self.calls: Counter[str] = Counter()

    @classmethod
    def connect(cls, host: str | None = None) -> KubeClient:
        """A client for ``host`` (plain HTTP, no credentials: tests), else for this cluster.

        Without ``host``: the pod's service account when running in a cluster
        (``KUBERNETES_SERVICE_HOST`` set), else ``KUBECONFIG`` (or
        ``~/.kube/config``) and its current context.
        """
        if host is not None:
            return cls(client.ApiClient(client.Configuration(host=host)))
        configuration = client.Configuration()
        in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        load = config.load_incluster_config if in_cluster else config.load_kube_config
        try:
            load(client_configuration=configuration)
        except config.ConfigException as exc:
            raise ClusterUnavailable(f"no Kubernetes configuration: {exc}") from exc
        return cls(client.ApiClient(configuration))

    def close(self) -> None:
        self._api_client.close()

    @property
    def write_calls(self) -> int:
        return self.calls["create"] + self.calls["patch"] + self.calls["delete"]

    def list_managed(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The CronJobs of ``namespace`` the server says match the label ``selector``."""
        answer = self._call(
            "list",
            f"list CronJobs in {namespace}",
            self._batch.list_namespaced_cron_job,
            namespace,
            label_selector=selector,
        )
        items: list[dict[str, Any]] = answer.get("items") or []
        return items

    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The CronJob, or None when there is none of that name."""
        try:
            return self._call(
                "read",
                f"read CronJob {namespace}/{name}",
                self._batch.read_namespaced_cron_job,
                name,
                namespace,
            )
        except NotFoundError:
            return None

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create the CronJob; :class:`ConflictError` when its name is taken."""
        name = body.get("metadata", {}).get("name")
        return self._call(
            "create",
            f"create CronJob {namespace}/{name}",
            self._batch.create_namespaced_cron_job,
            namespace,
            body,
        )

    def merge_patch(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Apply a JSON merge patch (RFC 7386): dicts merge, lists are replaced, null removes."""
        return self._call(
            "patch",
            f"patch CronJob {namespace}/{name}",
            self._batch.patch_namespaced_cron_job,
            name,
            namespace,
            patch,
            _content_type=_MERGE_PATCH,
        )

    def delete(self, namespace: str, name: str) -> bool:
        """Delete the CronJob (its Jobs follow); False when it was gone already."""
        try:
            self._call(
                "delete",
                f"delete CronJob {namespace}/{name}",
                self._batch.delete_namespaced_cron_job,
                name,
                namespace,
                propagation_policy="Background",
            )
        except NotFoundError:
            return False
        return True

    def _call(
        self, verb: str, what: str, method: Any, *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        self.calls[verb] += 1
        try:
            response = method(
                *args, _preload_content=False, _request_timeout=self._timeout, **kwargs
            )
        except ApiException as exc:
            raise _translated(what, exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnavailable(f"{what}: the Kubernetes API is unreachable ({exc})") from exc
        answer: dict[str, Any] = json.loads(response.data or b"{}")
        return answer


def _translated(what: str, exc: ApiException) -> Exception:
    status = exc.status or 0
    try:
        message = json.loads(exc.body or b"{}").get("message") or exc.reason
    except (ValueError, AttributeError):
        message = exc.reason
    text = f"{what}: {status} {message}"
    if status == 0 or status >= 500 or status == 429:
        return ClusterUnavailable(text)
    if status == 409:
        return ConflictError(text)
    if status == 404:
        return NotFoundError(text)
    return InternalError(text)
