"""A fake Kubernetes API server for the scheduler's tests and benchmark.

kmock's :class:`~kmock.KubernetesEmulator` keeps objects in memory and serves
list, create, merge patch (``application/merge-patch+json``) and delete the
way the real ``kubernetes`` client calls them. :class:`FakeCluster` adds what
the scheduler's guarantees are tested against:

- the fields a real API server adds on every write (``uid``,
  ``resourceVersion``, ``creationTimestamp``, pod and container defaults,
  ``status``), so a comparison of whole objects would see differences;
- ``unavailable``: the next N requests are answered 503, as by an API
  server that is restarting;
- no request log: kmock keeps every request for assertions and matches each
  new one against them all, so a request would cost more than the one before
  (the tests count calls in the client instead).

kmock ignores label selectors (every CronJob of the namespace is listed) and
answers PUT and server-side apply with 404: the scheduler never uses them.

kmock's server is aiohttp on asyncio. The test process is patched by
eventlet, so :class:`FakeApiServer` runs the server's event loop in a real
OS thread (eventlet's original ``threading``) with a selector over the
original ``select``, never in a green thread.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import selectors
import sys
import uuid
from types import TracebackType
from typing import Any

import aiohttp.web
import attrs
import kmock
from kmock._internal import rendering  # the request type handlers receive

__all__ = ["CRONJOBS", "FakeApiServer", "FakeCluster"]

CRONJOBS = "batch/v1/cronjobs"
_revisions = itertools.count(1)


def _original(module: str) -> Any:
    if "eventlet" in sys.modules:
        from eventlet import patcher

        return patcher.original(module)
    return __import__(module)


class _Selector(selectors.SelectSelector):
    """A selector on the operating system's ``select``, even where eventlet patched it."""

    _select = staticmethod(_original("select").select)


def _server_defaults(obj: dict[str, Any]) -> dict[str, Any]:
    """A merge patch adding what a real API server adds to a CronJob it stores."""
    pod = copy.deepcopy(
        obj.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
        or {}
    )
    pod.setdefault("dnsPolicy", "ClusterFirst")
    pod.setdefault("schedulerName", "default-scheduler")
    pod.setdefault("terminationGracePeriodSeconds", 30)
    for container in pod.get("containers", []):
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("fieldRef")
            if ref is not None:
                ref.setdefault("apiVersion", "v1")
    meta = obj.get("metadata", {})
    return {
        "metadata": {
            "uid": meta.get("uid") or str(uuid.uuid4()),
            "resourceVersion": str(next(_revisions)),
            "creationTimestamp": meta.get("creationTimestamp") or "2025-01-01T00:00:00Z",
            "generation": int(meta.get("generation") or 0) + 1,
        },
        "spec": {
            "concurrencyPolicy": obj.get("spec", {}).get("concurrencyPolicy") or "Allow",
            "suspend": bool(obj.get("spec", {}).get("suspend")),
            "jobTemplate": {"spec": {"template": {"spec": pod}}},
        },
        "status": obj.get("status") or {},
    }


@attrs.define(kw_only=True)
class FakeCluster(kmock.KubernetesEmulator):
    """kmock's emulator, with server defaults and a switch for outages."""

    #: Requests still to be answered 503 Service Unavailable.
    unavailable: int = 0
    #: Set server-side defaults on every write, as a real API server does.
    defaults: bool = True

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        # kmock matches each request against views over every request it has
        # served: forget the earlier ones, or each request costs more than the last.
        del self._requests[:-1]
        if self.unavailable > 0 and request.resource is not None:
            self.unavailable -= 1
            return aiohttp.web.json_response(
                {"kind": "Status", "code": 503, "message": "the API server is restarting"},
                status=503,
            )
        response = await super()._handle(request)
        if self.defaults and request.action in (kmock.action.CREATE, kmock.action.UPDATE):
            name = request.name or (request.data or {}).get("metadata", {}).get("name")
            key = (request.resource, request.namespace, name)
            if response.status < 300 and key in self.objects:
                stored = self.objects[key]
                if not stored.deleted:
                    stored.patch(_server_defaults(dict(stored.raw)))
        return response

    def cronjobs(self, namespace: str) -> dict[str, dict[str, Any]]:
        """The CronJobs stored in ``namespace``, by name (read between requests)."""
        return {
            name: dict(obj.raw)
            for (resource, ns, name), obj in list(self.objects.items())
            if resource == kmock.resource(CRONJOBS) and ns == namespace and not obj.deleted
        }


class FakeApiServer:
    """Runs a :class:`FakeCluster` on 127.0.0.1 in a thread of its own; ``url`` is its address."""

    def __init__(self, **options: Any) -> None:
        self.cluster = FakeCluster(**options)
        self.url = ""
        threading = _original("threading")
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-kube-api", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> FakeApiServer:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the fake API server did not start: {self._error!r}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _serve(self) -> None:
        loop = asyncio.SelectorEventLoop(_Selector())
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with self.cluster, kmock.Server(self.cluster) as server:
            self.cluster.resources[CRONJOBS] = kmock.ResourceInfo(kind="CronJob", namespaced=True)
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()
