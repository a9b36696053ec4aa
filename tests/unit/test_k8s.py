"""Kubernetes manifests: rendered from a real rendered repository, parsed, cross-checked, schema-validated."""

from __future__ import annotations

from pathlib import Path

import pytest
from _require import require_module

yaml = require_module("yaml")

from clipq.app.cli import main  # noqa: E402
from clipq.app.k8s import PORTS, QUEUE_METRIC, K8sOptions, write_manifests  # noqa: E402


@pytest.fixture(scope="module")
def gpu_repository(tiny_artifacts, tmp_path_factory) -> Path:
    """The NGC (gpu) flavour of the shared artifacts, rendered by the real renderer."""
    from clipq.serving import RenderOptions, render_repository

    out = tmp_path_factory.mktemp("repo") / "triton"
    render_repository(tiny_artifacts, out, RenderOptions(flavour="gpu"))
    return out


def _docs(path: Path) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(path.read_text())}


def _served_models(repo: Path) -> set[str]:
    return {p.parent.name for p in (repo / "models").glob("*/config.pbtxt")}


def _args(container: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in container["args"][1:]:
        k, _, v = a.partition("=")
        out.setdefault(k, []).append(v)
    return out


def test_deployment_service_hpa_match_the_repository(gpu_repository, tmp_path):
    files = write_manifests(gpu_repository, tmp_path, K8sOptions(storage_uri="s3://bucket/clipq", max_replicas=6))
    docs = _docs(files["triton"])
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "ServiceMonitor"}
    dep, svc, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = dep["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    args = _args(triton)
    # every model of the repository is loaded, and nothing else
    assert set(args["--load-model"]) == _served_models(gpu_repository) != set()
    assert args["--model-control-mode"] == ["explicit"]
    assert dep["metadata"]["annotations"]["clipq.io/models"].split(",") == sorted(_served_models(gpu_repository))
    # the repository is fetched from object storage into the volume Triton reads
    fetch = pod["initContainers"][0]
    assert "s3://bucket/clipq" in fetch["command"]
    mount = fetch["volumeMounts"][0]["mountPath"]
    assert args["--model-repository"] == [f"{mount}/models"] and (gpu_repository / "models").is_dir()
    assert triton["volumeMounts"][0]["name"] == fetch["volumeMounts"][0]["name"] == pod["volumes"][0]["name"]
    # ports: the server's flags, the container ports, the Service's, the probes' and the monitor's agree
    cports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert cports == PORTS
    assert {k: int(args[f"--{k}-port"][0]) for k in PORTS} == PORTS
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {k: (v, k) for k, v in PORTS.items()}
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert docs["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "metrics"
    # selectors select the pods; the HPA scales this Deployment on the queue-time metric the adapter serves
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"] == labels == dep["spec"]["selector"]["matchLabels"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"] and hpa["spec"]["maxReplicas"] == 6
    metric = hpa["spec"]["metrics"][0]["pods"]
    assert metric["metric"]["name"] == QUEUE_METRIC and metric["target"]["averageValue"] == "20000"
    rules = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])["rules"]
    assert rules[0]["name"]["as"] == QUEUE_METRIC and "nv_inference_queue_duration_us" in rules[0]["metricsQuery"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1  # the gpu flavour asks for a GPU


def test_kserve_runtime_and_inference_service(gpu_repository, tmp_path):
    docs = _docs(write_manifests(gpu_repository, tmp_path)["kserve"])
    rt, isvc = docs["ServingRuntime"], docs["InferenceService"]
    assert isvc["spec"]["predictor"]["model"]["runtime"] == rt["metadata"]["name"]
    assert isvc["spec"]["predictor"]["model"]["modelFormat"]["name"] == rt["spec"]["supportedModelFormats"][0]["name"]
    args = _args(rt["spec"]["containers"][0])
    assert args["--model-repository"] == ["/mnt/models/models"]  # KServe's storage initializer target
    assert set(args["--load-model"]) == _served_models(gpu_repository)


def test_core_resources_validate_against_the_kubernetes_schemas(gpu_repository, tmp_path):
    kv = require_module("kubernetes_validate")
    files = write_manifests(gpu_repository, tmp_path)
    checked = 0
    for path in files.values():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["apiVersion"].split("/")[0] in ("serving.kserve.io", "monitoring.coreos.com"):
                continue  # CRDs: no schema ships with kubernetes-validate (checked structurally above)
            kv.validate(doc, "1.30.0", strict=True)
            checked += 1
    assert checked == 4


def test_cli_and_a_foreign_directory(gpu_repository, tmp_path, capsys):
    assert main(["deploy", "k8s", str(gpu_repository), "--out", str(tmp_path / "k"), "--gpus", "0"]) == 0
    dep = _docs(tmp_path / "k" / "triton.yaml")["Deployment"]
    assert "nvidia.com/gpu" not in dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert main(["deploy", "k8s", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a clipq-rendered repository" in capsys.readouterr().err


def test_a_cpu_server_repository_asks_for_no_gpu(tiny_artifacts, tmp_path):
    """The gpu flavour rendered for Triton's openvino backend (a CPU server) requests no GPU."""
    from clipq.serving import RenderOptions, render_repository

    repo = tmp_path / "triton"
    render_repository(tiny_artifacts, repo, RenderOptions(flavour="gpu", gpu_backend="openvino"))
    files = write_manifests(repo, tmp_path / "k", K8sOptions())
    dep = _docs(files["triton"])["Deployment"]
    assert "nvidia.com/gpu" not in dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    rt = _docs(files["kserve"])["ServingRuntime"]
    assert "nvidia.com/gpu" not in rt["spec"]["containers"][0]["resources"]["limits"]


def test_the_key_comes_from_a_secret_and_is_in_no_manifest(gpu_repository, tmp_path):
    from clipq.serving.server import RESTRICTED

    assert main(["deploy", "k8s", str(gpu_repository), "--out", str(tmp_path), "--api-key-secret", "clipq-key"]) == 0
    for name, kind in (("triton.yaml", "Deployment"), ("kserve.yaml", "ServingRuntime")):
        doc = _docs(tmp_path / name)[kind]
        spec = doc["spec"]["template"]["spec"] if kind == "Deployment" else doc["spec"]
        c = spec["containers"][0]
        assert c["env"] == [{"name": "CLIPQ_API_KEY",
                             "valueFrom": {"secretKeyRef": {"name": "clipq-key", "key": "api-key"}}}]
        args = _args(c)
        want = f"{','.join(RESTRICTED)}:clipq-api-key=$(CLIPQ_API_KEY)"  # expanded by Kubernetes from env
        assert args["--http-restricted-api"] == args["--grpc-restricted-protocol"] == [want]
    dep = _docs(tmp_path / "triton.yaml")["Deployment"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    kv = require_module("kubernetes_validate")
    kv.validate(dep, "1.30.0", strict=True)
    plain = _docs(write_manifests(gpu_repository, tmp_path / "plain")["triton"])["Deployment"]
    assert "env" not in plain["spec"]["template"]["spec"]["containers"][0]
