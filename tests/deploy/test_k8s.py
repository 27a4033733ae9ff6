"""The Kubernetes and KServe objects in deploy/, checked offline: the kustomizations build
with kubectl's own kustomize, every object validates against the Kubernetes schemas of a
pinned version, the KServe objects use only fields of KServe's API as its SDK defines
them, and the settings that must agree with the service (probes, drain timing, security)
do."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.settings import Settings
from tests.deploy import kserve_sdk

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KSERVE = ROOT / "deploy" / "kserve"
KUBERNETES_VERSION = "1.32.0"  # the schemas every object is validated against
OVERLAYS = ["base", "overlays/example", "overlays/gpu"]


def built(overlay: str) -> list[dict[str, Any]]:
    """What `kubectl kustomize` (kustomize built into kubectl; .ci/run installs it) makes of it."""
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl is not installed: apt-get install kubectl (.ci/run does)"
    result = subprocess.run([kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    objects = built(overlay)
    assert {o["kind"] for o in objects} >= {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_deployment_matches_the_services_health_and_drain_settings() -> None:
    deployment = one(built("base"), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # Readiness over gRPC's standard health service, on the port the service serves gRPC on.
    assert container["readinessProbe"]["grpc"]["port"] == Settings.model_fields["grpc_port"].default
    assert {"name": "grpc", "containerPort": 8001} in container["ports"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    env = env_of(container)
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    needed = pre_stop + float(env["ORTSERVE_DRAIN_DELAY_S"]) + float(env["ORTSERVE_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] > needed  # SIGKILL never cuts a drain short
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert env["ORTSERVE_HOST"] == "0.0.0.0"
    assert "ORTSERVE_INTRA_OP_THREADS" not in env  # threads follow the CPU limit (cgroup quota)
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["cpu"]


def test_pods_run_unprivileged_on_a_read_only_root() -> None:
    pod = one(built("base"), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]


def test_disruptions_and_autoscaling_keep_a_replica_serving() -> None:
    objects = built("overlays/example")
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] >= 1
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    selector = one(objects, "Service")["spec"]["selector"]
    labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"ortserve"}


def test_the_gpu_overlay_asks_for_a_gpu_and_runs_the_gpu_image() -> None:
    (container,) = one(built("overlays/gpu"), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith(":gpu")
    env = {e["name"]: e.get("value") for e in container["env"]}
    workers = int(env["ORTSERVE_WORKERS"])  # several event loops feed one GPU
    assert 1 < workers <= int(container["resources"]["requests"]["cpu"])
    assert env_of(container)["ORTSERVE_DRAIN_DELAY_S"] == "5"  # the base's settings survive the patch


# Each KServe kind: its SDK model, and the API version the SDK names it by (v1alpha1, v1beta1).
KSERVE_TYPES = {"ClusterServingRuntime": ("V1alpha1ClusterServingRuntime", "serving.kserve.io/v1alpha1"),
                "InferenceService": ("V1beta1InferenceService", "serving.kserve.io/v1beta1")}
# Kubernetes types inside KServe's, each checked inside the smallest object that holds it.
KUBERNETES_HOLDERS = {
    "V1Container": lambda c: {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
                              "spec": {"containers": [c]}},
    "V1ObjectMeta": lambda m: {"apiVersion": "v1", "kind": "ConfigMap", "metadata": m},
    "V1ContainerPort": lambda p: {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
                                  "spec": {"containers": [{"name": "check", "image": "check", "ports": [p]}]}},
}


@pytest.mark.parametrize("file", sorted(KSERVE.glob("*.yaml")), ids=lambda p: p.name)
def test_kserve_objects_use_only_fields_of_the_kserve_api(file: Path) -> None:
    (obj,) = yaml.safe_load_all(file.read_text())
    kind, api_version = KSERVE_TYPES[obj["kind"]]
    assert obj["apiVersion"] == api_version
    assert kserve_sdk.problems(obj, kind) == []
    for k8s_type, value in kserve_sdk.kubernetes_parts(obj, kind):
        assert k8s_type in KUBERNETES_HOLDERS, f"{file.name}: add how to check a {k8s_type}"
        kubernetes_validate.validate(KUBERNETES_HOLDERS[k8s_type](value), KUBERNETES_VERSION, strict=True)


def test_the_kserve_check_finds_a_misspelt_field() -> None:
    service = yaml.safe_load((KSERVE / "inference-service.yaml").read_text())
    service["spec"]["predictor"]["model"]["storageURI"] = service["spec"]["predictor"]["model"].pop("storageUri")
    assert kserve_sdk.problems(service, "V1beta1InferenceService") == [
        "V1beta1InferenceService.spec.predictor.model: 'storageURI' is not a field of V1beta1ModelSpec"]


def test_the_inference_service_names_the_runtime_and_a_format_it_serves() -> None:
    runtime = yaml.safe_load((KSERVE / "cluster-serving-runtime.yaml").read_text())
    service = yaml.safe_load((KSERVE / "inference-service.yaml").read_text())
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    env = env_of(runtime["spec"]["containers"][0])
    assert env["ORTSERVE_MODEL_DIR"] == "/mnt/models"  # where KServe's storage initializer puts storageUri
    port = runtime["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert env["ORTSERVE_PORT"] == str(port)


def test_the_service_publishes_grpc_as_http2() -> None:
    service = one(built("base"), "Service")
    (grpc_port,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc_port["targetPort"] == "grpc"
    assert grpc_port["appProtocol"] == "kubernetes.io/h2c"


def test_the_grpc_inference_service_routes_to_the_runtimes_grpc_port() -> None:
    runtime = yaml.safe_load((KSERVE / "cluster-serving-runtime.yaml").read_text())
    service = yaml.safe_load((KSERVE / "inference-service-grpc.yaml").read_text())
    model = service["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "grpc-v2"
    assert "grpc-v2" in runtime["spec"]["protocolVersions"]
    (port,) = model["ports"]
    assert port["name"] == "h2c"  # what makes KServe (Knative) route HTTP/2 to it
    assert env_of(runtime["spec"]["containers"][0])["ORTSERVE_GRPC_PORT"] == str(port["containerPort"])
