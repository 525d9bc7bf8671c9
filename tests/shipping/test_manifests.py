"""The container and the Kubernetes manifests: schema-valid, and consistent with each other.

kubeconform is not in the package registries we can use (not in Debian, PyPI or npm),
so the manifests are checked with ``jsonschema`` against the small strict schemas in
``schemas/`` (subsets of the Kubernetes OpenAPI definitions and of KEDA's CRD). Then
the things a schema cannot see: the ConfigMap's pipeline file passes ``bridge
validate`` with the Deployment's environment, the paths, ports, user and timeouts of
the Dockerfile, the Deployment, the Service and the ScaledObject agree.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from consumer_core.config.durations import parse_duration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KINDS = {
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("v1", "ConfigMap"): "configmap-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda-v1alpha1.json",
}
MANIFESTS = sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


# ----------------------------------------------------------------- helpers


def _schemas() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.json")}


def _validator(kind: tuple[str, str]) -> Draft202012Validator:
    schemas = _schemas()
    registry: Registry = Registry().with_resources(
        (doc["$id"], Resource.from_contents(doc)) for doc in schemas.values()
    )
    return Draft202012Validator(schemas[KINDS[kind]], registry=registry)


def _errors(doc: dict[str, Any]) -> list[str]:
    kind = (doc.get("apiVersion"), doc.get("kind"))
    if kind not in KINDS:
        return [f"no schema for {kind}"]
    found = _validator(kind).iter_errors(doc)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found)


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]


def _one(name: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _documents(name) if d["kind"] == kind]
    return doc


def _container() -> dict[str, Any]:
    (container,) = _one("deployment.yaml", "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _pipeline_file() -> dict[str, Any]:
    return dict(yaml.safe_load(_one("configmap.yaml", "ConfigMap")["data"]["bridge.yaml"]))


def _dockerfile() -> list[tuple[str, str]]:
    """The final stage's instructions as (INSTRUCTION, arguments), continuations joined."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = [
        (parts[0].upper(), parts[1].strip() if len(parts) > 1 else "")
        for parts in (line.strip().split(None, 1) for line in joined.splitlines() if line.strip())
    ]
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def _instruction(name: str) -> list[str]:
    return [args for instr, args in _dockerfile() if instr == name]


# ----------------------------------------------------------------- schemas


@pytest.mark.parametrize("name", sorted(p.name for p in SCHEMAS.glob("*.json")))
def test_vendored_schemas_are_valid_json_schemas(name):
    Draft202012Validator.check_schema(json.loads((SCHEMAS / name).read_text()))


def test_every_manifest_file_is_checked():
    assert {
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "scaledobject.yaml",
        "scaledobject-rabbitmq.yaml",
        "scaledobject-sqs.yaml",
    } <= set(MANIFESTS)


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_matches_the_kubernetes_schema(name):
    documents = _documents(name)
    assert documents, f"{name} holds no document"
    for doc in documents:
        assert _errors(doc) == [], f"{name}: {doc.get('kind')}"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c.__setitem__("readinesProbe", c.pop("readinessProbe")), "readinesProbe"),
        (lambda c: c["ports"][0].__setitem__("containerPort", "8081"), "is not of type"),
        (lambda c: c["resources"]["limits"].__setitem__("memory", "512 MB"), "memory"),
        (lambda c: c["env"][0].pop("name"), "'name' is a required property"),
    ],
)
def test_schema_check_catches_a_broken_deployment(change, expected):
    deployment = copy.deepcopy(_one("deployment.yaml", "Deployment"))
    change(deployment["spec"]["template"]["spec"]["containers"][0])
    errors = _errors(deployment)
    assert errors
    assert any(expected in e for e in errors), errors


def test_schema_check_catches_a_non_string_keda_metadata_value():
    scaled = copy.deepcopy(_one("scaledobject.yaml", "ScaledObject"))
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 500
    assert any("is not of type 'string'" in e for e in _errors(scaled))


def test_kustomization_applies_the_core_manifests():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert set(resources) == {
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "scaledobject.yaml",
    }
    assert all((DEPLOY / r).is_file() for r in resources)
    (image,) = kustomization["images"]
    assert _container()["image"].split(":")[0] == image["name"]


# ----------------------------------------------------------------- the pipeline file


def test_configmap_pipeline_file_passes_bridge_validate(tmp_path):
    text = _one("configmap.yaml", "ConfigMap")["data"]["bridge.yaml"]
    path = tmp_path / "bridge.yaml"
    path.write_text(text)
    # what the Deployment gives the container; Secret values are stand-ins here
    env = {
        e["name"]: e.get("value", f"stand-in-for-{e['name'].lower()}") for e in _container()["env"]
    }
    required = {m.group(1) for m in _VAR.finditer(text) if m.group(2) is None}
    assert required <= env.keys(), "variables the Deployment does not set"
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "consumer_core", "validate", str(path)]
    done = subprocess.run(command, env={**base, **env}, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    # and without the environment it is refused: the ${VAR}s are really used
    bare = subprocess.run(command, env=base, capture_output=True, text=True, cwd=ROOT)
    assert bare.returncode == 2
    assert "BRIDGE_TOKEN is not set" in bare.stderr + bare.stdout


def test_configmap_pipeline_is_kafka_with_a_shared_postgres_store():
    config = _pipeline_file()
    assert config["server"]["listen"] == "0.0.0.0:8081"
    assert config["server"]["token"] == "${BRIDGE_TOKEN}"
    env = {e["name"]: e for e in _container()["env"]}
    assert env["BRIDGE_TOKEN"]["valueFrom"]["secretKeyRef"]["key"]
    assert config["state"]["url"].split(":-")[-1].startswith("postgresql://")
    assert env["BRIDGE_STATE_URL"]["value"].startswith("postgresql://")
    assert "valueFrom" in env["PGPASSWORD"]
    (pipeline,) = config["pipelines"]
    assert pipeline["source"]["type"] == "kafka"


def test_scaledobject_watches_the_pipeline_group_and_scales_the_deployment():
    deployment = _one("deployment.yaml", "Deployment")
    (pipeline,) = _pipeline_file()["pipelines"]
    scaled = _one("scaledobject.yaml", "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == pipeline["source"]["group_id"]
    assert trigger["metadata"]["topic"] in pipeline["source"]["topics"]
    assert scaled["spec"]["minReplicaCount"] >= 1  # the admin API stays up
    examples = {"scaledobject-rabbitmq.yaml": "rabbitmq", "scaledobject-sqs.yaml": "aws-sqs-queue"}
    for name, kind in examples.items():
        example = _one(name, "ScaledObject")
        assert example["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert [t["type"] for t in example["spec"]["triggers"]] == [kind]


# ----------------------------------------------------------------- deployment and container


def test_deployment_outlives_the_drain_and_probes_the_admin_port():
    deployment = _one("deployment.yaml", "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    config = _pipeline_file()
    drain = parse_duration(config.get("shutdown_timeout", "30s"))
    assert pod["terminationGracePeriodSeconds"] > drain
    container = _container()
    (port,) = container["ports"]
    assert port["containerPort"] == int(config["server"]["listen"].rsplit(":", 1)[1])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    service = _one("service.yaml", "Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in (port["name"], port["containerPort"])


def test_deployment_runs_as_the_images_non_root_user():
    pod = _one("deployment.yaml", "Deployment")["spec"]["template"]["spec"]
    (user,) = _instruction("USER")
    uid = user.split(":")[0]
    assert uid.isdigit(), "USER must be numeric so runAsNonRoot can check it"
    assert int(uid) != 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid)
    security = _container()["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_dockerfile_entrypoint_healthcheck_and_config_path():
    assert _dockerfile()[0] == ("FROM", "python:3.11-slim")
    (entrypoint,) = _instruction("ENTRYPOINT")
    assert json.loads(entrypoint) == ["bridge", "run"]
    (cmd,) = _instruction("CMD")
    (config_path,) = json.loads(cmd)
    (healthcheck,) = _instruction("HEALTHCHECK")
    assert "urllib.request" in healthcheck
    env = " ".join(_instruction("ENV"))
    assert "BRIDGE_LOG_FORMAT=json" in env
    assert "BRIDGE_HEALTHCHECK_URL=http://127.0.0.1:8081/healthz" in env
    assert _instruction("EXPOSE") == ["8081"]
    # the Deployment mounts the ConfigMap exactly where the image reads its config
    container = _container()
    pod = _one("deployment.yaml", "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    (item,) = volume["configMap"]["items"]
    assert f"{mount['mountPath']}/{item['path']}" == config_path == "/etc/bridge/bridge.yaml"
    assert container.get("args", [config_path]) == [config_path]
    assert volume["configMap"]["name"] == _one("configmap.yaml", "ConfigMap")["metadata"]["name"]
    assert item["key"] in _one("configmap.yaml", "ConfigMap")["data"]


def test_dockerfile_healthcheck_command_runs():
    """The exact HEALTHCHECK command, against a URL nothing listens on: it must fail
    (exit non-zero) rather than pass vacuously, and be valid Python."""
    (healthcheck,) = _instruction("HEALTHCHECK")
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command[:2] == ["python", "-c"]
    env = {"BRIDGE_HEALTHCHECK_URL": "http://127.0.0.1:9/healthz", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", command[2]], env=env, capture_output=True)
    assert done.returncode == 1
    assert b"URLError" in done.stderr


def test_dockerignore_keeps_what_the_build_copies():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in ignore
    text = (ROOT / "Dockerfile").read_text()
    copied = [
        source.rstrip("/")
        for line in text.splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for source in shlex.split(line)[1:-1]
    ]
    assert "consumer_core" in copied
    for path in copied:
        assert f"!{path}" in ignore or f"!{path}/" in ignore, path
        assert (ROOT / path).exists(), path
