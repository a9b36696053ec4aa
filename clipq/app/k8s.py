"""Kubernetes manifests for a rendered Triton repository: KServe, or a Deployment + HPA on queue time.

``clipq deploy k8s REPOSITORY --out DIR --image IMAGE --storage-uri URI`` writes, from the repository's
own record (``clipq_repository.json``, so names, ports and the model list cannot drift):

- ``kserve.yaml``: a ``ServingRuntime`` (the clipq Triton image: NGC tritonserver + the clipq backend,
  deploy/Dockerfile) and an ``InferenceService`` whose storage initializer copies the repository from
  object storage (``storageUri``) to /mnt/models;
- ``triton.yaml``: a ``Deployment`` (an init container syncs the repository from object storage into
  an emptyDir, tritonserver serves it with ``--model-control-mode=explicit`` and one ``--load-model``
  per model), a ``Service`` (HTTP 8000, gRPC 8001, metrics 8002), readiness and liveness probes on
  ``/v2/health/ready`` and ``/v2/health/live``, a ``HorizontalPodAutoscaler`` on the average queue
  time per request (Triton's ``nv_inference_queue_duration_us`` over ``nv_inference_request_success``,
  served to the HPA by prometheus-adapter with the rule in the ``ConfigMap``), and a ServiceMonitor.

With ``--api-key-secret NAME`` both carry Triton's key from that Secret (its ``api-key`` entry) into
the container's ``CLIPQ_API_KEY`` and restrict every protocol group but health to it, as
``clipq serve --api-key`` does (Kubernetes expands ``$(CLIPQ_API_KEY)`` in the arguments; the key
itself is in no manifest); the probes stay on the open health endpoints.

The repository is copied to local disk before Triton reads it (not ``--model-repository=s3://``)
because the tokenize models name their shared tokenizer folder by a relative path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipq.runtime.errors import ArtifactError

PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
QUEUE_METRIC = "clipq_triton_avg_queue_us"
#: prometheus-adapter rule: average queue time per successful request over the last minute, per pod
QUEUE_RULE = {
    "seriesQuery": 'nv_inference_queue_duration_us{namespace!="",pod!=""}',
    "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
    "name": {"matches": "nv_inference_queue_duration_us", "as": QUEUE_METRIC},
    "metricsQuery": ("sum(rate(nv_inference_queue_duration_us{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)"
                     " / clamp_min(sum(rate(nv_inference_request_success{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>), 1)"),
}


@dataclass(kw_only=True)
class K8sOptions:
    """What the manifests need that the repository does not say."""

    image: str = "clipq-tritonserver:latest"  # built from deploy/Dockerfile
    storage_uri: str = "s3://clipq-models/repository"
    name: str = "clipq"
    namespace: str = "default"
    replicas: int = 1
    max_replicas: int = 4
    queue_target_us: int = 20_000  # scale out when requests wait 20 ms on average
    gpus: int | None = None  # None: 1 for the gpu flavour, 0 for cpu-python
    cpu: str = "4"
    memory: str = "16Gi"
    sync_image: str = "amazon/aws-cli:2.17.0"  # any image with a copy command for the storage scheme
    api_key_secret: str | None = None  # a Secret whose "api-key" entry Triton's restricted protocols want
    milvus: str | None = None  # "standalone" / "cluster": also write milvus-values.yaml (clipq.app.k8s_milvus)
    milvus_vectors: int = 10_000_000  # the collection size the Milvus query memory is sized for


def _labels(o: K8sOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": o.name, "app.kubernetes.io/component": "triton"}


def _models(info: dict[str, Any]) -> list[str]:
    models = sorted(info.get("models") or {})
    if not models:
        raise ArtifactError("the repository record lists no models")
    return models


def _uses_gpu(info: dict[str, Any]) -> bool:
    """The gpu flavour, unless it was rendered for a CPU server (``gpu_backend`` openvino)."""
    return info.get("flavour", "gpu") == "gpu" and (info.get("options") or {}).get("gpu_backend") != "openvino"


def _resources(o: K8sOptions, info: dict[str, Any]) -> dict[str, Any]:
    gpus = o.gpus if o.gpus is not None else (1 if _uses_gpu(info) else 0)
    limits: dict[str, Any] = {"cpu": o.cpu, "memory": o.memory}
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    return {"requests": {"cpu": o.cpu, "memory": o.memory}, "limits": limits}


#: The entry of the ``api_key_secret`` Secret that holds the key, and the variable it becomes.
SECRET_KEY, KEY_ENV = "api-key", "CLIPQ_API_KEY"


def _tritonserver_args(model_store: str, models: list[str], o: K8sOptions) -> list[str]:
    args = ["tritonserver", f"--model-repository={model_store}", "--backend-directory=/opt/tritonserver/backends",
            "--model-control-mode=explicit", *[f"--load-model={m}" for m in models],
            f"--http-port={PORTS['http']}", f"--grpc-port={PORTS['grpc']}", f"--metrics-port={PORTS['metrics']}",
            "--allow-metrics=true", "--exit-on-error=true"]
    if o.api_key_secret:
        from clipq.runtime.backends.triton_protocol import API_KEY_HEADER
        from clipq.serving.server import RESTRICTED

        restrict = f"{','.join(RESTRICTED)}:{API_KEY_HEADER}=$({KEY_ENV})"
        args += [f"--http-restricted-api={restrict}", f"--grpc-restricted-protocol={restrict}"]
    return args


def _key_env(o: K8sOptions) -> dict[str, Any]:
    """The container's ``env`` carrying the key from the Secret (nothing without one)."""
    if not o.api_key_secret:
        return {}
    return {"env": [{"name": KEY_ENV, "valueFrom": {"secretKeyRef": {"name": o.api_key_secret, "key": SECRET_KEY}}}]}


def _probes() -> dict[str, Any]:
    def probe(path: str, delay: int, failures: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "http"}, "initialDelaySeconds": delay, "periodSeconds": 10,
                "failureThreshold": failures}

    return {"readinessProbe": probe("/v2/health/ready", 10, 3), "livenessProbe": probe("/v2/health/live", 30, 6)}


def _container_ports() -> list[dict[str, Any]]:
    return [{"name": n, "containerPort": p} for n, p in PORTS.items()]


def render_kserve(info: dict[str, Any], o: K8sOptions) -> list[dict[str, Any]]:
    models = _models(info)
    runtime = {
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime",
        "metadata": {"name": f"{o.name}-tritonserver", "namespace": o.namespace},
        "spec": {
            "supportedModelFormats": [{"name": "triton", "version": "2", "autoSelect": False}],
            "protocolVersions": ["v2", "grpc-v2"],
            "containers": [{
                "name": "kserve-container", "image": o.image,
                # KServe's storage initializer puts storageUri at /mnt/models; the Triton models are models/
                "args": _tritonserver_args("/mnt/models/models", models, o),
                **_key_env(o),
                "ports": [{"name": "h2c", "containerPort": PORTS["grpc"], "protocol": "TCP"}],
                "resources": _resources(o, info),
            }],
        },
    }
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": o.name, "namespace": o.namespace, "annotations": {"clipq.io/models": ",".join(models)}},
        "spec": {"predictor": {
            "minReplicas": o.replicas, "maxReplicas": o.max_replicas,
            "model": {"modelFormat": {"name": "triton"}, "runtime": f"{o.name}-tritonserver",
                      "storageUri": o.storage_uri, "protocolVersion": "v2"},
        }},
    }
    return [runtime, isvc]


def render_deployment(info: dict[str, Any], o: K8sOptions) -> list[dict[str, Any]]:
    flavour = info.get("flavour", "gpu")
    models = _models(info)
    labels = _labels(o)
    meta = {"name": o.name, "namespace": o.namespace, "labels": labels}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {**meta, "annotations": {"clipq.io/models": ",".join(models), "clipq.io/flavour": flavour}},
        "spec": {
            "replicas": o.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "initContainers": [{
                        "name": "fetch-repository", "image": o.sync_image,
                        "command": ["aws", "s3", "sync", o.storage_uri, "/repository"],
                        "volumeMounts": [{"name": "repository", "mountPath": "/repository"}],
                    }],
                    "containers": [{
                        "name": "tritonserver", "image": o.image,
                        "args": _tritonserver_args("/repository/models", models, o),
                        **_key_env(o),
                        "ports": _container_ports(),
                        "resources": _resources(o, info),
                        "volumeMounts": [{"name": "repository", "mountPath": "/repository", "readOnly": True}],
                        **_probes(),
                    }],
                    "volumes": [{"name": "repository", "emptyDir": {}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"selector": labels,
                 "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in PORTS.items()]},
    }
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": o.name},
            "minReplicas": o.replicas, "maxReplicas": o.max_replicas,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": QUEUE_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(o.queue_target_us)},
            }}],
        },
    }
    import yaml

    adapter = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": f"{o.name}-prometheus-adapter-rules", "namespace": o.namespace, "labels": labels},
        "data": {"config.yaml": yaml.safe_dump({"rules": [QUEUE_RULE]}, sort_keys=False)},
    }
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": meta,
        "spec": {"selector": {"matchLabels": labels}, "endpoints": [{"port": "metrics", "interval": "15s"}]},
    }
    return [deployment, service, hpa, adapter, monitor]


def _no_aliases_dumper() -> type:
    import yaml

    class NoAliases(yaml.SafeDumper):
        """Plain YAML: the shared label dicts are written out, not as &anchors a reader must follow."""

        def ignore_aliases(self, data: Any) -> bool:
            return True

    return NoAliases


def write_manifests(repository: str | os.PathLike[str], out: str | os.PathLike[str],
                    options: K8sOptions | None = None) -> dict[str, Path]:
    """Render both manifest sets for a clipq-rendered repository into ``out``.

    Raises:
        ArtifactError: ``repository`` is not a clipq-rendered Triton repository.
    """
    import yaml

    from clipq.serving import read_repository_info

    info = read_repository_info(repository)
    if info is None:
        raise ArtifactError(f"{repository}: not a clipq-rendered repository (no clipq_repository.json)")
    o = options or K8sOptions()
    _NoAliases = _no_aliases_dumper()  # noqa: N806 - a class
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"kserve": out / "kserve.yaml", "triton": out / "triton.yaml"}
    for key, docs in (("kserve", render_kserve(info, o)), ("triton", render_deployment(info, o))):
        header = (f"# rendered by `clipq deploy k8s` from {Path(repository).name}/clipq_repository.json "
                  f"({info.get('flavour')} flavour, {len(_models(info))} models); do not edit by hand\n")
        files[key].write_text(header + yaml.dump_all(docs, Dumper=_NoAliases, sort_keys=False))
    if o.milvus:
        from clipq.app.k8s_milvus import milvus_values, values_header

        files["milvus"] = out / "milvus-values.yaml"
        values = milvus_values(o.milvus, vectors=o.milvus_vectors)
        files["milvus"].write_text(values_header(o.milvus, o.name, o.namespace, o.milvus_vectors)
                                   + yaml.dump(values, Dumper=_NoAliases, sort_keys=False))
    return files
