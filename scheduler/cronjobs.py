"""The CronJob a cron trigger becomes: desired state, as a plain manifest.

First stage of the Kubernetes backend: :func:`autostep.triggers.cron_targets`
reads the enabled and disabled cron triggers (:class:`CronTarget`, the core's
row of each),
:func:`desired_cronjob` turns each into the manifest of one CronJob, and
:mod:`autostep.scheduler.reconcile` makes the cluster match those manifests.
Nothing here talks to a cluster; a manifest is a ``dict`` that could be
written out as YAML.

Each CronJob's pods run ``autostep fire --trigger <id>`` in the platform
image. ``fire`` learns which tick it serves from its Job's name: the CronJob
controller names the Job of a tick ``<cronjob name>-<minutes since the Unix
epoch of the scheduled time>`` (``getJobName`` and ``getTimeHashInMinutes`` in
``pkg/controller/cronjob/utils.go`` of Kubernetes), and the Job controller
labels its pods ``batch.kubernetes.io/job-name=<job name>`` (Kubernetes 1.27
and later; see "Well-Known Labels, Annotations and Taints",
https://kubernetes.io/docs/reference/labels-annotations-taints/). The pod
reads that label through the downward API into ``AUTOSTEP_JOB_NAME``.

Facts the manifest relies on:

- A CronJob's name is at most 52 characters: the controller appends 11 (``-``
  and the minutes) and a Job's name is at most 63
  (https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/).
- ``spec.timeZone`` takes an IANA zone name; it is stable (GA) since
  Kubernetes 1.27 (the same page, "Time zones").
- ``restartPolicy: Never``: a failed ``fire`` leaves its pod, and its logs,
  for ``kubectl logs``, and the Job starts a new pod, up to ``backoffLimit``.
  With ``OnFailure`` the kubelet restarts the container in the same pod and
  the logs of earlier attempts are gone. Either is safe: a tick is recorded
  once (``trigger_tick``), so a second pod for the same tick starts nothing.
"""

from __future__ import annotations

import re
from typing import Any

from autostep.settings import Settings
from autostep.triggers import CronTriggerRow

__all__ = [
    "COMPONENT",
    "MANAGED_BY",
    "MANAGED_SELECTOR",
    "MAX_NAME_LENGTH",
    "TRIGGER_ID_LABEL",
    "VERSION_ANNOTATION",
    "CronTarget",
    "cronjob_name",
    "desired_cronjob",
]

#: ``app.kubernetes.io/managed-by`` of every CronJob the scheduler owns.
MANAGED_BY = "autostep"
MANAGED_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
COMPONENT = "cron-trigger"
TRIGGER_ID_LABEL = "autostep.io/trigger-id"
VERSION_ANNOTATION = "autostep.io/trigger-version"
#: 63 (a Job's name) minus the 11 characters the CronJob controller appends.
MAX_NAME_LENGTH = 52
_PREFIX = "as-"
_ID_CHARS = 10
_CONCURRENCY = {"allow": "Allow", "forbid": "Forbid", "replace": "Replace"}


#: What the scheduler needs to know of one cron trigger: the core's row of it.
CronTarget = CronTriggerRow


def cronjob_name(target: CronTarget) -> str:
    """``as-<the trigger's name as a DNS label, shortened>-<10 hex of its id>``.

    Always a valid DNS-1123 label of at most :data:`MAX_NAME_LENGTH`
    characters; two triggers get two names (the id part), and a person
    reading ``kubectl get cronjobs`` sees which trigger is which.
    """
    suffix = "-" + target.id.hex[:_ID_CHARS]
    room = MAX_NAME_LENGTH - len(_PREFIX) - len(suffix)
    slug = re.sub(r"[^a-z0-9]+", "-", target.name.lower()).strip("-")
    slug = slug[:room].rstrip("-")
    return f"{_PREFIX}{slug}{suffix}" if slug else f"{_PREFIX}{suffix[1:]}"


def _labels(target: CronTarget) -> dict[str, str]:
    return {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "autostep",
        "app.kubernetes.io/component": COMPONENT,
        TRIGGER_ID_LABEL: str(target.id),
    }


def _container(target: CronTarget, settings: Settings) -> dict[str, Any]:
    return {
        "name": "fire",
        "image": settings.image,
        "imagePullPolicy": settings.scheduler_image_pull_policy,
        "command": ["autostep"],
        "args": ["fire", "--trigger", str(target.id)],
        "env": [
            {"name": "AUTOSTEP_IMAGE", "value": settings.image},
            {
                "name": "AUTOSTEP_DATABASE_URL",
                "valueFrom": {
                    "secretKeyRef": {
                        "name": settings.scheduler_database_secret,
                        "key": settings.scheduler_database_secret_key,
                    }
                },
            },
            {
                "name": "AUTOSTEP_JOB_NAME",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}
                },
            },
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def desired_cronjob(target: CronTarget, settings: Settings) -> dict[str, Any]:
    """The CronJob manifest for ``target``, namespace left to whoever applies it.

    A disabled trigger keeps its CronJob, suspended (``suspend: true``), so
    enabling it again changes one field. ``startingDeadlineSeconds`` is
    ``None`` when the trigger sets none: written as ``null`` in a merge patch
    it removes an earlier value.
    """
    labels = _labels(target)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # ``fire`` needs no Kubernetes API access: its pods get no token.
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(target, settings)],
    }
    if settings.scheduler_service_account:
        pod_spec["serviceAccountName"] = settings.scheduler_service_account
    pull_secrets = [
        name.strip() for name in settings.scheduler_image_pull_secrets.split(",") if name.strip()
    ]
    if pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in pull_secrets]
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": cronjob_name(target),
            "labels": labels,
            "annotations": {VERSION_ANNOTATION: str(target.version)},
        },
        "spec": {
            "schedule": target.schedule,
            "timeZone": target.time_zone,
            "concurrencyPolicy": _CONCURRENCY[target.concurrency],
            "startingDeadlineSeconds": target.starting_deadline_seconds,
            "suspend": not target.enabled,
            "successfulJobsHistoryLimit": settings.scheduler_successful_jobs_history,
            "failedJobsHistoryLimit": settings.scheduler_failed_jobs_history,
            "jobTemplate": {
                "metadata": {"labels": labels},
                "spec": {
                    "backoffLimit": settings.scheduler_backoff_limit,
                    "ttlSecondsAfterFinished": settings.scheduler_ttl_seconds_after_finished,
                    "template": {"metadata": {"labels": labels}, "spec": pod_spec},
                },
            },
        },
    }
