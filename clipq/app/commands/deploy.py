"""`clipq deploy k8s REPOSITORY --out DIR`: Kubernetes manifests (KServe, or Deployment + HPA) for a repository."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="render deployment manifests for a rendered Triton repository")
    s = p.add_subparsers(dest="deploy_target", metavar="TARGET")
    s.required = True
    k = s.add_parser("k8s", help="KServe InferenceService, and Deployment + Service + HPA on Triton's queue time")
    k.add_argument("repository", help="a repository rendered by `clipq serve`/`python -m clipq.serving render`")
    k.add_argument("--out", required=True, help="directory for kserve.yaml and triton.yaml")
    k.add_argument("--image", default="clipq-tritonserver:latest", help="image built from deploy/Dockerfile")
    k.add_argument("--storage-uri", default="s3://clipq-models/repository",
                   help="where the rendered repository lives in object storage")
    k.add_argument("--name", default="clipq")
    k.add_argument("--namespace", default="default")
    k.add_argument("--replicas", type=int, default=1)
    k.add_argument("--max-replicas", type=int, default=4)
    k.add_argument("--queue-target-us", type=int, default=20_000,
                   help="scale out above this average queue time per request (default %(default)s us)")
    k.add_argument("--gpus", type=int, default=None, help="GPUs per replica (default: 1 for the gpu flavour)")
    k.add_argument("--api-key-secret", default=None, metavar="NAME",
                   help="a Secret whose 'api-key' entry Triton's protocols (all but health) require, as "
                        "`clipq serve --api-key` (docs/security.md)")
    k.add_argument("--milvus", choices=("standalone", "cluster"), default=None,
                   help="also write milvus-values.yaml for the official Milvus Helm chart (docs/deploy.md, Milvus)")
    k.add_argument("--milvus-vectors", type=int, default=10_000_000,
                   help="collection size Milvus' query memory is sized for (default %(default)s)")
    k.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipq.app.k8s import K8sOptions, write_manifests

    o = K8sOptions(image=args.image, storage_uri=args.storage_uri, name=args.name, namespace=args.namespace,
                   replicas=args.replicas, max_replicas=args.max_replicas, queue_target_us=args.queue_target_us,
                   gpus=args.gpus, api_key_secret=args.api_key_secret, milvus=args.milvus,
                   milvus_vectors=args.milvus_vectors)
    for key, path in write_manifests(args.repository, args.out, o).items():
        print(f"{key}: {path}")
    return 0
