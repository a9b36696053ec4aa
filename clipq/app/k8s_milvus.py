"""Helm values for the official Milvus chart: what clipq needs of a Milvus deployment.

``clipq deploy k8s ... --milvus standalone|cluster`` writes ``milvus-values.yaml`` next to the Triton
manifests, for ``helm install <release> milvus/milvus -f milvus-values.yaml`` (chart repository
https://zilliztech.github.io/milvus-helm/). clipq then reaches it at
``milvus://<release>-milvus.<namespace>.svc:19530/<collection>`` (``--store`` on the CLI and the
app), with the token in ``$CLIPQ_MILVUS_TOKEN``.

What clipq asks of it: authentication on (``common.security.authorizationEnabled``: the data is a
photo collection's), metrics scraped by the Prometheus operator, persistent storage, and query
memory for the collection: HNSW on float32 vectors keeps vectors and graph in the query nodes'
memory, about 2.2 KB a 512-d vector at M 16 (clipq's hnswlib measurement; docs/deploy.md), with 30 %
headroom for segments being loaded and compacted.
"""

from __future__ import annotations

import math
from typing import Any

#: bytes of memory a 512-d float32 vector takes with its HNSW graph (M 16; measured on hnswlib, 1M vectors)
BYTES_PER_VECTOR = 2200
HEADROOM = 1.3
CHART = "milvus/milvus"
CHART_REPO = "https://zilliztech.github.io/milvus-helm/"


def query_memory_gib(vectors: int, dim: int, nodes: int) -> int:
    """Memory (GiB) each query node (or the standalone pod) requests to hold its share of the collection."""
    per_vector = BYTES_PER_VECTOR * dim / 512
    return max(4, math.ceil(vectors * per_vector * HEADROOM / max(nodes, 1) / 2**30))


def milvus_values(
    mode: str, *, vectors: int = 10_000_000, dim: int = 512, query_nodes: int = 2
) -> dict[str, Any]:
    """The chart's values for ``mode`` (``standalone``: one pod; ``cluster``: query/data/index nodes).

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in ("standalone", "cluster"):
        raise ValueError(f"--milvus must be standalone or cluster, not {mode!r}")
    cluster = mode == "cluster"
    nodes = query_nodes if cluster else 1
    mem = f"{query_memory_gib(vectors, dim, nodes)}Gi"
    values: dict[str, Any] = {
        "cluster": {"enabled": cluster},
        "etcd": {"replicaCount": 3 if cluster else 1},
        "minio": {"mode": "distributed" if cluster else "standalone"},
        # standalone keeps its log in the pod (rocksmq); a cluster needs the chart's Pulsar
        "pulsarv3": {"enabled": cluster},
        "pulsar": {"enabled": False},
        "metrics": {"enabled": True, "serviceMonitor": {"enabled": True}},
        "extraConfigFiles": {"user.yaml": "common:\n  security:\n    authorizationEnabled: true\n"},
    }
    if cluster:
        values["queryNode"] = {"replicas": nodes, "resources": {"requests": {"cpu": "4", "memory": mem}}}
        values["dataNode"] = {"replicas": 1}
        values["indexNode"] = {"replicas": 1, "resources": {"requests": {"cpu": "4", "memory": "8Gi"}}}
    else:
        values["standalone"] = {
            "messageQueue": "rocksmq",
            "resources": {"requests": {"cpu": "4", "memory": mem}},
            "persistence": {"persistentVolumeClaim": {"size": "100Gi"}},
        }
    return values


def store_url(release: str, namespace: str, collection: str = "images") -> str:
    """The ``--store`` URL of the chart's Service (``<release>-milvus``, port 19530) inside the cluster."""
    return f"milvus://{release}-milvus.{namespace}.svc:19530/{collection}"


def values_header(mode: str, release: str, namespace: str, vectors: int) -> str:
    """The comment at the top of ``milvus-values.yaml``: how to install it and how clipq reaches it."""
    return (
        f"# rendered by `clipq deploy k8s --milvus {mode}` for about {vectors:,} vectors (docs/deploy.md, Milvus)\n"
        f"# helm repo add milvus {CHART_REPO}\n"
        f"# helm install {release} {CHART} -n {namespace} -f milvus-values.yaml\n"
        f"# clipq: --store {store_url(release, namespace)} with $CLIPQ_MILVUS_TOKEN set (user:password)\n"
    )
