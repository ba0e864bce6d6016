"""The CronJob manifest of a cron trigger: name, labels, schedule fields, the fire pod."""

from __future__ import annotations

import re
import uuid
from dataclasses import replace

import pytest

from autostep.scheduler.cronjobs import (
    MANAGED_BY,
    MAX_NAME_LENGTH,
    TRIGGER_ID_LABEL,
    VERSION_ANNOTATION,
    CronTarget,
    cronjob_name,
    desired_cronjob,
)
from autostep.settings import Settings

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def target(**changes: object) -> CronTarget:
    base = CronTarget(
        id=uuid.UUID("0123456789abcdef0123456789abcdef"),
        project_id=uuid.uuid4(),
        workflow_id=uuid.uuid4(),
        name="nightly-report",
        schedule="0 3 * * *",
        time_zone="Europe/Paris",
        concurrency="forbid",
        starting_deadline_seconds=120,
        enabled=True,
        version=4,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    ["nightly-report", "x" * 200, "Ünïcode & Spaces__", "---", "a" * 37 + "-b", "UPPER.case"],
)
def test_name_is_a_short_dns_label_tied_to_the_trigger(name: str) -> None:
    made = cronjob_name(target(name=name))
    assert len(made) <= MAX_NAME_LENGTH
    assert DNS_LABEL.match(made), made
    assert made.startswith("as-") and made.endswith("-0123456789")
    assert made == cronjob_name(target(name=name, version=9, enabled=False))


def test_name_shows_the_trigger_name() -> None:
    assert cronjob_name(target()) == "as-nightly-report-0123456789"


def test_manifest_fields() -> None:
    settings = Settings(image="registry.example/autostep:1.2", scheduler_service_account="fire")
    manifest = desired_cronjob(target(), settings)
    meta, spec = manifest["metadata"], manifest["spec"]
    assert meta["labels"]["app.kubernetes.io/managed-by"] == MANAGED_BY
    assert meta["labels"][TRIGGER_ID_LABEL] == "01234567-89ab-cdef-0123-456789abcdef"
    assert meta["annotations"][VERSION_ANNOTATION] == "4"
    assert spec["schedule"] == "0 3 * * *"
    assert spec["timeZone"] == "Europe/Paris"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] == 120
    assert spec["suspend"] is False
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "fire"
    (container,) = pod["containers"]
    assert container["image"] == "registry.example/autostep:1.2"
    assert container["command"] + container["args"] == [
        "autostep", "fire", "--trigger", "01234567-89ab-cdef-0123-456789abcdef",
    ]
    env = {item["name"]: item for item in container["env"]}
    assert env["AUTOSTEP_JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['batch.kubernetes.io/job-name']"
    )
    assert env["AUTOSTEP_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": settings.scheduler_database_secret,
        "key": settings.scheduler_database_secret_key,
    }


def test_disabled_trigger_is_suspended_and_no_deadline_is_null() -> None:
    disabled = target(enabled=False, starting_deadline_seconds=None)
    spec = desired_cronjob(disabled, Settings())["spec"]
    assert spec["suspend"] is True
    assert spec["startingDeadlineSeconds"] is None
    assert "serviceAccountName" not in spec["jobTemplate"]["spec"]["template"]["spec"]
