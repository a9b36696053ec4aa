"""``clipq deploy k8s --milvus``: Helm values for the official Milvus chart, and the URL clipq uses to reach it."""

from __future__ import annotations

from pathlib import Path

import pytest
from _require import require_module

yaml = require_module("yaml")

from clipq.app.cli import main  # noqa: E402
from clipq.app.k8s_milvus import milvus_values, query_memory_gib  # noqa: E402
from clipq.runtime.index.milvus_url import MilvusURL  # noqa: E402

#: the value paths clipq sets, each present in the chart's own values.yaml (zilliztech/milvus-helm,
#: charts/milvus/values.yaml, chart 4.2; pulsarv3 from its README): a misspelt key would be ignored by Helm
CHART_KEYS = {
    "cluster.enabled",
    "etcd.replicaCount",
    "minio.mode",
    "pulsarv3.enabled",
    "pulsar.enabled",
    "metrics.enabled",
    "metrics.serviceMonitor.enabled",
    "extraConfigFiles.user.yaml",
    "queryNode.replicas",
    "queryNode.resources",
    "dataNode.replicas",
    "indexNode.replicas",
    "indexNode.resources",
    "standalone.messageQueue",
    "standalone.resources",
    "standalone.persistence.persistentVolumeClaim.size",
}


def _paths(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and not path.endswith("resources"):
            out |= _paths(v, path + ".")
        else:
            out.add(path)
    return out


@pytest.fixture(scope="module")
def repository(tiny_artifacts, tmp_path_factory) -> Path:
    from clipq.serving import RenderOptions, render_repository

    out = tmp_path_factory.mktemp("repo") / "triton"
    render_repository(tiny_artifacts, out, RenderOptions(flavour="gpu"))
    return out


@pytest.mark.parametrize("mode", ["standalone", "cluster"])
def test_values_for_the_official_chart(repository, tmp_path, capsys, mode):
    out = tmp_path / "k"
    argv = [
        "deploy",
        "k8s",
        str(repository),
        "--out",
        str(out),
        "--name",
        "photos",
        "--namespace",
        "search",
        "--milvus",
        mode,
        "--milvus-vectors",
        "50000000",
    ]
    assert main(argv) == 0
    assert f"milvus: {out / 'milvus-values.yaml'}" in capsys.readouterr().out
    text = (out / "milvus-values.yaml").read_text()
    values = yaml.safe_load(text)
    assert _paths(values) <= CHART_KEYS, _paths(values) - CHART_KEYS
    assert values["cluster"]["enabled"] is (mode == "cluster")
    assert yaml.safe_load(values["extraConfigFiles"]["user.yaml"]) == {
        "common": {"security": {"authorizationEnabled": True}}
    }
    pod = values["queryNode"] if mode == "cluster" else values["standalone"]
    # 50M vectors x 2.2 KB x 1.3 headroom, over two query nodes (a cluster) or one pod
    want = 67 if mode == "cluster" else 134
    assert pod["resources"]["requests"]["memory"] == f"{want}Gi"
    url = next(line.split("--store ")[1].split()[0] for line in text.splitlines() if "--store" in line)
    parsed = MilvusURL.parse(url)
    assert (parsed.uri, parsed.collection) == ("http://photos-milvus.search.svc:19530", "images")
    assert "helm install photos milvus/milvus -n search -f milvus-values.yaml" in text
    # the Triton manifests are unchanged beside it
    assert (out / "triton.yaml").is_file() and (out / "kserve.yaml").is_file()


def test_sizing_and_bad_mode():
    assert query_memory_gib(1000, 512, 1) == 4  # a floor for the engine itself
    assert abs(4 * query_memory_gib(100_000_000, 512, 4) - query_memory_gib(100_000_000, 512, 1)) <= 4
    assert query_memory_gib(10_000_000, 256, 1) < query_memory_gib(10_000_000, 512, 1)
    with pytest.raises(ValueError, match="standalone or cluster"):
        milvus_values("distributed")
