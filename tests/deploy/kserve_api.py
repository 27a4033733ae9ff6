"""The KServe objects' fields, as KServe's API reference defines them (KServe v0.14:
serving.kserve.io/v1alpha1 ServingRuntimeSpec and SupportedModelFormat, v1beta1
InferenceServiceSpec, PredictorSpec, ComponentExtensionSpec and ModelSpec), written down as
JSON Schemas so that a misspelt or invented field fails offline. Fields of embedded
Kubernetes types (containers, probes, resources) are checked against the Kubernetes
schemas by kubernetes-validate instead.
"""

from __future__ import annotations

from typing import Any

KSERVE_VERSION = "v0.14"
_ANY_OBJECT: dict[str, Any] = {"type": "object"}
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}

SUPPORTED_MODEL_FORMAT = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {"name": {"type": "string"}, "version": {"type": "string"}, "autoSelect": {"type": "boolean"},
                   "priority": {"type": "integer", "minimum": 1}},
}
PROTOCOL = {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}

SERVING_RUNTIME_SPEC = {
    "type": "object", "additionalProperties": False, "required": ["containers"],
    "properties": {
        "supportedModelFormats": {"type": "array", "items": SUPPORTED_MODEL_FORMAT},
        "multiModel": {"type": "boolean"}, "disabled": {"type": "boolean"},
        "protocolVersions": {"type": "array", "items": PROTOCOL},
        "grpcEndpoint": {"type": "string"}, "grpcDataEndpoint": {"type": "string"},
        "httpDataEndpoint": {"type": "string"}, "replicas": {"type": "integer"},
        "storageHelper": {"type": "object", "additionalProperties": False,
                          "properties": {"disabled": {"type": "boolean"}}},
        "builtInAdapter": _ANY_OBJECT, "workerSpec": _ANY_OBJECT,
        # ServingRuntimePodSpec, inlined
        "containers": {"type": "array", "minItems": 1, "items": _ANY_OBJECT},
        "volumes": {"type": "array"}, "nodeSelector": _ANY_OBJECT, "affinity": _ANY_OBJECT,
        "tolerations": {"type": "array"}, "labels": _ANY_OBJECT, "annotations": _ANY_OBJECT,
        "imagePullSecrets": {"type": "array"}, "hostIPC": {"type": "boolean"},
    },
}

CLUSTER_SERVING_RUNTIME = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {"apiVersion": {"const": "serving.kserve.io/v1alpha1"}, "kind": {"const": "ClusterServingRuntime"},
                   "metadata": _METADATA, "spec": SERVING_RUNTIME_SPEC},
}

MODEL_SPEC = {
    "type": "object", "additionalProperties": False, "required": ["modelFormat"],
    "properties": {
        "modelFormat": {"type": "object", "additionalProperties": False, "required": ["name"],
                        "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
        "runtime": {"type": "string"}, "storageUri": {"type": "string"}, "protocolVersion": PROTOCOL,
        "storage": _ANY_OBJECT,
        # corev1.Container, inlined
        "image": {"type": "string"}, "args": {"type": "array"}, "command": {"type": "array"},
        "env": {"type": "array"}, "resources": _ANY_OBJECT, "ports": {"type": "array"},
        "volumeMounts": {"type": "array"}, "readinessProbe": _ANY_OBJECT, "livenessProbe": _ANY_OBJECT,
    },
}

PREDICTOR_SPEC = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "model": MODEL_SPEC,
        # ComponentExtensionSpec
        "minReplicas": {"type": "integer", "minimum": 0}, "maxReplicas": {"type": "integer", "minimum": 0},
        "scaleTarget": {"type": "integer"}, "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
        "containerConcurrency": {"type": "integer"}, "timeout": {"type": "integer"},
        "canaryTrafficPercent": {"type": "integer"}, "logger": _ANY_OBJECT, "batcher": _ANY_OBJECT,
        "labels": _ANY_OBJECT, "annotations": _ANY_OBJECT, "deploymentStrategy": _ANY_OBJECT,
        # PodSpec fields, inlined
        "serviceAccountName": {"type": "string"}, "nodeSelector": _ANY_OBJECT, "tolerations": {"type": "array"},
        "affinity": _ANY_OBJECT, "volumes": {"type": "array"}, "imagePullSecrets": {"type": "array"},
        "containers": {"type": "array"}, "securityContext": _ANY_OBJECT,
    },
}

INFERENCE_SERVICE = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"}, "kind": {"const": "InferenceService"},
        "metadata": _METADATA,
        "spec": {"type": "object", "additionalProperties": False, "required": ["predictor"],
                 "properties": {"predictor": PREDICTOR_SPEC, "transformer": _ANY_OBJECT, "explainer": _ANY_OBJECT}},
    },
}

SCHEMAS = {"ClusterServingRuntime": CLUSTER_SERVING_RUNTIME, "InferenceService": INFERENCE_SERVICE}
