"""Kubernetes manifests: rendered (render.py, equal to `kubectl kustomize`), schema-valid, policy-clean."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
TOOLS = Path(os.environ.get("GRADHEALTH_TOOLS_BIN", ROOT / ".venv-tools" / "bin"))
SCHEMAS = Path(__file__).parent / "schemas"
TARGETS = ["base", "overlays/self-hosted", "overlays/managed"]

sys.path.insert(0, str(KUBE))
import render  # noqa: E402

Obj = dict[str, Any]


def _objects(target: str) -> list[Obj]:
    return render.build(KUBE / target)


def _by(objects: list[Obj], kind: str, name: str) -> Obj:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def _tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {TOOLS} (.ci/run installs it: python -m venv .venv-tools ...)")
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each target rendered to its own folder, one file per target."""
    out = {}
    for target in TARGETS:
        folder = tmp_path_factory.mktemp(target.replace("/", "-"))
        (folder / "manifests.yaml").write_text(render.render(KUBE / target))
        out[target] = folder
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_render_matches_kubectl_kustomize(target: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: render.py is checked against `kubectl kustomize` where it is")
    built = subprocess.run([kubectl, "kustomize", str(KUBE / target)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(built.stdout) if o}
    ours = {(o["kind"], o["metadata"]["name"]): o for o in _objects(target)}
    assert ours == theirs


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_validates_against_its_schema(target: str, rendered: dict[str, Path]) -> None:
    validator = _tool("kubernetes-validate")
    done = subprocess.run(
        [str(validator), "--strict", "--quiet", str(rendered[target] / "manifests.yaml")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # kubernetes-validate knows the built-in kinds; the CRDs (KEDA, prometheus-operator) are checked here.
    custom = [o for o in _objects(target) if "." in o["apiVersion"].split("/")[0] and "k8s.io" not in o["apiVersion"]]
    assert custom, "the KEDA objects should be there"
    for obj in custom:
        group_version = obj["apiVersion"].replace("/", "_")
        schema_file = SCHEMAS / f"{group_version}_{obj['kind']}.json"
        assert schema_file.exists(), f"no schema for {obj['apiVersion']} {obj['kind']}: add {schema_file.name}"
        jsonschema.validate(obj, json.loads(schema_file.read_text()))
    skipped = [line for line in done.stdout.splitlines() if "Couldn't find schema" in line]
    assert len(skipped) == len(custom), skipped  # nothing else went unchecked


def test_a_broken_object_is_caught(tmp_path: Path) -> None:
    """The validators really validate: a wrong type and a misspelled KEDA field both fail."""
    validator = _tool("kubernetes-validate")
    api = _by(_objects("base"), "Deployment", "gradhealth-api")
    api["spec"]["replicas"] = "two"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(api))
    done = subprocess.run([str(validator), "--strict", "--quiet", str(tmp_path / "bad.yaml")], capture_output=True)
    assert done.returncode != 0
    scaled = _by(_objects("base"), "ScaledObject", "gradhealth-worker-gpu")
    scaled["spec"]["maxReplicas"] = 3
    schema = json.loads((SCHEMAS / "keda.sh_v1alpha1_ScaledObject.json").read_text())
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        jsonschema.validate(scaled, schema)


def test_checkov_policies_pass(tmp_path: Path) -> None:
    """One checkov run over every target (each in its own file): about 10 s, most of it start-up."""
    checkov = _tool("checkov")
    for target in TARGETS:
        (tmp_path / f"{target.replace('/', '-')}.yaml").write_text(render.render(KUBE / target))
    done = subprocess.run(
        [str(checkov), "-d", str(tmp_path), "--config-file", str(KUBE / "checkov.yaml"), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    report = json.loads(done.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [
        f"{c['file_path']} {c['check_id']} {c['resource']}: {c['check_name']}"
        for r in reports
        for c in r["results"]["failed_checks"]
    ]
    passed = sum(r["summary"]["passed"] for r in reports)
    assert failed == [] and passed > 300, failed


def _pods(objects: list[Obj]) -> list[tuple[str, Obj]]:
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"]) for o in objects if o["kind"] == "Deployment"]


@pytest.mark.parametrize("target", TARGETS)
def test_restricted_pod_security_everywhere(target: str) -> None:
    objects = _objects(target)
    namespace = _by(objects, "Namespace", "gradhealth")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, pod in _pods(objects):
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost"), name
        for container in [*pod["containers"], *pod.get("initContainers", [])]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
            assert "limits" in container["resources"], (name, container["name"])
            mounted = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounted, f"{name}/{container['name']}: a read-only root needs a writable /tmp"


def test_roles_probes_gpu_and_autoscaling() -> None:
    objects = _objects("base")
    api = _by(objects, "Deployment", "gradhealth-api")["spec"]["template"]["spec"]
    assert api["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["initContainers"][0]["args"] == ["migrate"]  # migrations before the API starts
    service = _by(objects, "Service", "gradhealth-api")
    assert service["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert _by(objects, "HorizontalPodAutoscaler", "gradhealth-api")["spec"]["maxReplicas"] >= 2

    gpu = _by(objects, "Deployment", "gradhealth-worker-gpu")["spec"]["template"]["spec"]
    worker = gpu["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1 and worker["args"] == ["gpu-workers"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    assert gpu["nodeSelector"] and gpu["hostUsers"] is False
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["GRADHEALTH_QUEUES"] == "gpu" and env["GRADHEALTH_GPUS"] == "1"
    # Workers are probed with their own health command, never the API's port.
    for name in ("gradhealth-worker-gpu", "gradhealth-worker-cpu"):
        probe = _by(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
        assert probe["exec"]["command"] == ["/usr/local/bin/gradhealth-healthcheck"] and "httpGet" not in probe
    cpu_env = {e["name"]: e.get("value") for e in _by(objects, "Deployment", "gradhealth-worker-cpu")["spec"]["template"]["spec"]["containers"][0]["env"]}  # fmt: skip
    assert cpu_env["GRADHEALTH_QUEUES"] == "cpu"

    scaled = {o["spec"]["scaleTargetRef"]["name"]: o["spec"] for o in objects if o["kind"] == "ScaledObject"}
    assert (
        scaled["gradhealth-worker-gpu"]["minReplicaCount"] == 0
        and scaled["gradhealth-worker-gpu"]["maxReplicaCount"] == 8
    )
    assert [t["metadata"]["listName"] for t in scaled["gradhealth-worker-gpu"]["triggers"]] == ["gpu"]
    assert [t["metadata"]["listName"] for t in scaled["gradhealth-worker-cpu"]["triggers"]] == ["cpu"]


def _egress_ports(policy: Obj) -> set[int]:
    return {p["port"] for rule in policy["spec"].get("egress", []) for p in rule.get("ports", [])}


@pytest.mark.parametrize("target", TARGETS)
def test_network_policy_gives_webhook_egress_to_the_cpu_worker_only(target: str) -> None:
    objects = _objects(target)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny = _by(objects, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"} and "egress" not in deny

    def egress_for(pod_labels: dict[str, str]) -> set[int]:
        ports: set[int] = set()
        for policy in policies:
            selector = policy["spec"]["podSelector"].get("matchLabels", {})
            if all(pod_labels.get(k) == v for k, v in selector.items()):
                ports |= _egress_ports(policy)
        return ports

    storage = {53, 5432, 6379, 443}
    for name, _pod in _pods(objects):
        labels = _by(objects, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        ports = egress_for(labels)
        assert storage <= ports, name
        assert (80 in ports) == (name == "gradhealth-worker-cpu"), f"{name}: webhook egress is the cpu worker's alone"
    webhooks = _by(objects, "NetworkPolicy", "webhooks")["spec"]["egress"][0]["to"][0]["ipBlock"]
    assert {"10.0.0.0/8", "169.254.0.0/16", "192.168.0.0/16"} <= set(webhooks["except"])


def test_managed_overlay_points_at_managed_services() -> None:
    objects = _objects("overlays/managed")
    config = _by(objects, "ConfigMap", "gradhealth-config")["data"]
    assert config["GRADHEALTH_BLOB_URL"].startswith("s3://") and "AWS_ENDPOINT_URL" not in config
    account = _by(objects, "ServiceAccount", "gradhealth")
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]
    storage = _by(objects, "NetworkPolicy", "storage")["spec"]["egress"]
    assert storage[0]["to"][0]["ipBlock"] == {"cidr": "10.20.32.0/20"}
    assert _by(objects, "ServiceMonitor", "gradhealth-api")["metadata"]["namespace"] == "gradhealth"
    images = {c["image"] for _, pod in _pods(objects) for c in pod["containers"]}
    assert all(".dkr.ecr." in image for image in images)
    gpu = _by(objects, "Deployment", "gradhealth-worker-gpu")["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1  # the patch merged, not replaced
    assert gpu["containers"][0]["resources"]["limits"]["memory"] == "30Gi"
    assert not any(o["kind"] == "Secret" for o in objects)  # managed secrets come from the secret manager


def test_render_refuses_what_it_does_not_understand(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nconfigMapGenerator: [{name: x}]\n")
    with pytest.raises(ValueError, match="configMapGenerator"):
        render.build(tmp_path)
