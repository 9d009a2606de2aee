"""The deployment files agree with the code they deploy.

Nothing here runs a cluster: it renders the Kubernetes manifests, then checks
every setting name, command, label selector, port and probe in them, and in
the systemd units, against the real settings, command line and routes.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.rest.routes.health import router as health_router
from server.settings import Settings
from tests.servers import SEALSERVE

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def manifests() -> list[dict[str, Any]]:
    """Every object the kustomization lists, in order."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization["resources"]:
        objects += [o for o in yaml.safe_load_all((KUBERNETES / resource).read_text()) if o]
    return objects


def of_kind(kind: str) -> list[dict[str, Any]]:
    """The objects of one kind."""
    return [o for o in manifests() if o["kind"] == kind]


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    """A workload's pod template."""
    return workload["spec"]["template"]


def containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container of every workload."""
    return [
        (workload, container)
        for kind in WORKLOADS
        for workload in of_kind(kind)
        for container in pod_template(workload)["spec"]["containers"]
    ]


def config_maps() -> dict[str, dict[str, str]]:
    """Each ConfigMap's data, by name."""
    return {o["metadata"]["name"]: o["data"] for o in of_kind("ConfigMap")}


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's SEALSERVE_* environment; values from Secrets become placeholders."""
    env: dict[str, str] = {}
    maps = config_maps()
    for source in container.get("envFrom", []):
        env |= maps[source["configMapRef"]["name"]]
    for variable in container.get("env", []):
        env[variable["name"]] = variable.get("value", f"<secret {variable['name']}>")
    return env


def setting_of(variable: str) -> str:
    """The ``Settings`` field an environment variable sets."""
    return variable.removeprefix("SEALSERVE_").lower()


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """True when ``labels`` carry every label of ``selector``."""
    return all(labels.get(key) == value for key, value in selector.items())


@functools.cache
def help_of(*command: str) -> str:
    """``sealserve COMMAND --help``, which must succeed."""
    result = subprocess.run(  # noqa: S603 - our own console script
        [SEALSERVE, *command, "--help"],
        capture_output=True,
        text=True,
        check=False,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, f"sealserve {' '.join(command)}: {result.stderr}"
    return result.stdout


def assert_real_command(args: list[str]) -> None:
    """``sealserve ARGS`` names a real (sub)command and only options it has."""
    words = [a for a in args if not a.startswith("-")]
    options = [a.split("=", 1)[0] for a in args if a.startswith("--")]
    # The subcommand path is the leading words that are commands ("db upgrade").
    path = words[:2] if words[:1] == ["db"] else words[:1]
    text = help_of(*path)
    for option in options:
        assert option in text, f"sealserve {' '.join(path)} has no option {option}"


def test_kustomize_renders_every_object() -> None:
    """``kubectl kustomize`` builds the same objects, with the image tag applied."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    rendered = subprocess.run(  # noqa: S603 - fixed arguments
        [kubectl, "kustomize", str(KUBERNETES)], capture_output=True, text=True, check=True
    ).stdout
    objects = [o for o in yaml.safe_load_all(rendered) if o]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in manifests()
    )
    namespaced = [o for o in objects if o["kind"] != "Namespace"]
    assert {o["metadata"]["namespace"] for o in namespaced} == {"sealserve"}
    images = {
        c["image"]
        for o in objects
        if o["kind"] in WORKLOADS
        for c in pod_template(o)["spec"]["containers"]
    }
    assert images == {"sealserve:0.1.0"}


def test_every_setting_named_is_a_real_setting() -> None:
    """Config maps, container env and unit files name only fields of ``Settings``."""
    names = set()
    for data in config_maps().values():
        names |= set(data)
    for _, container in containers():
        names |= {variable["name"] for variable in container.get("env", [])}
    for unit in UNITS:
        names |= set(re.findall(r"\b(SEALSERVE_[A-Z_]+)=", unit.read_text()))
    names = {name for name in names if name.startswith("SEALSERVE_")}
    assert names, "no settings found"
    unknown = sorted(name for name in names if setting_of(name) not in Settings.model_fields)
    assert unknown == []


def test_each_container_has_valid_production_settings() -> None:
    """What each container's environment adds up to passes ``Settings`` validation."""
    for workload, container in containers():
        env = container_env(container)
        assert env.get("SEALSERVE_ENV") == "production", workload["metadata"]["name"]
        values: dict[str, Any] = {setting_of(k): v for k, v in env.items()}
        if "remote_workers" in values:
            values["remote_workers"] = json.loads(values["remote_workers"])
        Settings(**values)


def test_every_command_is_a_real_sealserve_command() -> None:
    """Container args and unit ExecStart lines run subcommands and options that exist."""
    for _, container in containers():
        assert_real_command(container["args"])
    for unit in UNITS:
        for line in re.findall(r"^Exec\w+=(.+)$", unit.read_text(), flags=re.MULTILINE):
            program, *args = line.split()
            assert program.endswith("/sealserve")
            assert_real_command(args)


def test_selectors_match_the_pods_they_mean() -> None:
    """Workload, Service, PodDisruptionBudget and NetworkPolicy selectors each find pods."""
    pods = {}
    for kind in WORKLOADS:
        for workload in of_kind(kind):
            labels = pod_template(workload)["metadata"]["labels"]
            selector = workload["spec"].get("selector", {}).get("matchLabels")
            if selector is not None:
                assert matches(selector, labels), workload["metadata"]["name"]
            pods[workload["metadata"]["name"]] = (labels, pod_template(workload)["spec"])
    selectors = [(o, o["spec"]["selector"]) for o in of_kind("Service")]
    selectors += [(o, o["spec"]["selector"]["matchLabels"]) for o in of_kind("PodDisruptionBudget")]
    for policy in of_kind("NetworkPolicy"):
        selectors.append((policy, policy["spec"]["podSelector"]["matchLabels"]))
        selectors += [
            (policy, source["podSelector"]["matchLabels"])
            for rule in policy["spec"]["ingress"]
            for source in rule["from"]
        ]
    for owner, selector in selectors:
        found = [name for name, (labels, _) in pods.items() if matches(selector, labels)]
        assert len(found) == 1, (owner["metadata"]["name"], selector, found)
    for service in of_kind("Service"):
        (labels, spec) = next(
            p for p in pods.values() if matches(service["spec"]["selector"], p[0])
        )
        declared = {p["name"] for c in spec["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in declared, (service["metadata"]["name"], port)


def test_probes_use_declared_ports_and_real_health_routes() -> None:
    """HTTP probes hit ``/v2/health/*`` routes that exist, on ports the container declares."""
    routes = {route.path for route in health_router.routes}
    probed = 0
    for _, container in containers():
        ports = {p["name"] for p in container.get("ports", [])}
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = container.get(kind)
            if probe is None:
                continue
            probed += 1
            action = probe.get("httpGet") or probe.get("tcpSocket")
            assert action["port"] in ports, (container["name"], kind)
            if "httpGet" in probe:
                assert probe["httpGet"]["path"] in routes, probe["httpGet"]["path"]
    assert probed >= 4


def test_gateways_list_the_stateful_workers_on_their_port() -> None:
    """Each SEALSERVE_REMOTE_WORKERS entry is a pod of the worker StatefulSet, on its port."""
    (workers,) = of_kind("StatefulSet")
    (worker,) = pod_template(workers)["spec"]["containers"]
    listen = worker["args"][worker["args"].index("--listen") + 1]
    port = int(listen.rsplit(":", 1)[1])
    assert port in {p["containerPort"] for p in worker["ports"]}
    gateways = [c for w, c in containers() if w["metadata"]["name"] == "sealserve-gateway"]
    listed = json.loads(container_env(gateways[0])["SEALSERVE_REMOTE_WORKERS"])
    name, service = workers["metadata"]["name"], workers["spec"]["serviceName"]
    namespace = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["namespace"]
    # Full names: the workers' certificate covers *.<service>.<namespace>.svc.
    assert sorted(listed) == [
        f"{name}-{i}.{service}.{namespace}.svc:{port}" for i in range(workers["spec"]["replicas"])
    ]
    (headless,) = (s for s in of_kind("Service") if s["metadata"]["name"] == service)
    assert headless["spec"]["clusterIP"] == "None"


def test_tls_files_are_on_mounted_volumes() -> None:
    """Every SEALSERVE_WORKER_TLS_* path lies under one of the container's volume mounts."""
    for workload, container in containers():
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        for variable, path in container_env(container).items():
            if variable.startswith("SEALSERVE_WORKER_TLS_"):
                assert any(path.startswith(m + "/") for m in mounts), (
                    workload["metadata"]["name"],
                    path,
                )


def test_dockerfile_copies_what_exists_and_runs_the_cli() -> None:
    """Every COPY source is in the repository; the entry point is the console script."""
    text = (DEPLOY / "Dockerfile").read_text()
    root = DEPLOY.parent
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.MULTILINE):
        *sources, _ = line.split()
        for source in sources:
            assert (root / source).exists(), source
    assert 'ENTRYPOINT ["sealserve"]' in text


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.name)
def test_systemd_units_verify(unit: Path, tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts each unit, pointed at this checkout's console script."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = unit.read_text().replace("/opt/sealserve/bin/sealserve", SEALSERVE)
    text = re.sub(r"^EnvironmentFile=", "EnvironmentFile=-", text, flags=re.MULTILINE)
    local = tmp_path / unit.name
    local.write_text(text)
    result = subprocess.run(  # noqa: S603 - fixed arguments
        [analyze, "verify", str(local)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown" not in result.stderr, result.stderr
