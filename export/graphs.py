"""torch -> ONNX for every clipq network, driven by the network's spec in the manifest.

Exporter choice (why not optimum): optimum's ONNX exporter knows transformers' model classes
(``CLIPModel``, ``DistilBertModel``, ...) and their output names, but every clipq graph is a wrapper
with its own signature: towers that L2-normalise, the VQA graph that chains mapper, prefix,
language model and answer head, the regressor and the ensemble head, all with tensor names fixed
by ``clipq.runtime.specs``. Describing each in an optimum ``OnnxConfig`` would add a class per
network and still end in ``torch.onnx.export``, which optimum calls underneath. So clipq calls
``torch.onnx.export`` itself, with the TorchScript-based exporter (``dynamo=False``): the dynamo
exporter needs ``onnxscript`` (not a dependency) and writes weights as external data files even
for small graphs. Models are built with ``attn_implementation="eager"``, which exports to a smaller
and faster graph than sdpa (CLIP ViT-B/32 shapes: 974 nodes against 1190; measured in the prototype on
a 2-core x86 CPU with AVX512-VNNI). optimum's ``ORTModel`` is still measured as the peer in
``clipq bench``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from clipq.runtime.errors import ArtifactError, MissingDependencyError
from clipq.runtime.manifest import ModelSpec

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
#: above this many bytes of weights, weights go to an external "<file>.data" (protobuf's 2 GiB cap)
EXTERNAL_DATA_BYTES = 1_800_000_000


def dynamic_axes(spec: ModelSpec) -> dict[str, dict[int, str]]:
    """ONNX dynamic-axis names from a spec: -1 dims become symbols; text inputs share "sequence".

    Sharing one symbol between ``input_ids`` and ``attention_mask`` tells onnxruntime that their
    lengths agree, which lets it plan memory once per shape instead of per tensor.
    """
    axes: dict[str, dict[int, str]] = {}
    for t in [*spec.inputs, *spec.outputs]:
        d: dict[int, str] = {}
        for i, n in enumerate(t.shape):
            if n >= 0:
                continue
            if i == 0:
                d[i] = "batch"
            elif t.dtype == "int64" and i == 1:
                d[i] = "sequence"
            else:
                d[i] = f"{t.name}_{i}"
        if d:
            axes[t.name] = d
    return axes


def export_onnx(module: Any, spec: ModelSpec, path: str | os.PathLike[str], sample: dict[str, np.ndarray],
                opset: int = DEFAULT_OPSET) -> list[Path]:
    """Export ``module`` to ``path`` with the names, dtypes and dynamic axes of ``spec``.

    Args:
        module: A ``torch.nn.Module`` whose ``forward`` takes the spec's inputs in order.
        spec: The network's tensor contract.
        path: Output ``.onnx`` file.
        sample: Example inputs (numpy, batch >= 2 so that no batch dimension is specialised).
        opset: ONNX opset (>= 17: LayerNormalization is a single op from 17 on).

    Returns:
        The files written (the graph, plus its external data file for graphs over ~1.8 GB).

    Raises:
        ArtifactError: the exporter failed or the graph does not declare the spec's tensors.
    """
    try:
        import onnx
        import torch
    except ImportError as e:
        raise MissingDependencyError(e.name or "torch", "train", "ONNX export") from e
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    args = tuple(torch.from_numpy(np.ascontiguousarray(sample[t.name])) for t in spec.inputs)
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    module.eval()
    with warnings.catch_warnings():
        # TracerWarnings about Python control flow on shapes are expected: the traced branches are
        # the ones for batch/sequence > 1, which parity then checks at batch 1 too.
        warnings.simplefilter("ignore")
        try:
            with torch.inference_mode():
                torch.onnx.export(
                    module, args, str(path),
                    input_names=[t.name for t in spec.inputs],
                    output_names=[t.name for t in spec.outputs],
                    dynamic_axes=dynamic_axes(spec),
                    opset_version=opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
        except Exception as e:  # noqa: BLE001 - the exporter raises many unrelated types
            raise ArtifactError(f"torch.onnx.export failed for {spec.name}: {e}") from e
    model = onnx.load(str(path), load_external_data=True)
    names_in = [i.name for i in model.graph.input]
    names_out = [o.name for o in model.graph.output]
    want_in = [t.name for t in spec.inputs]
    if names_in != want_in or names_out != [t.name for t in spec.outputs]:
        raise ArtifactError(f"{path.name}: graph tensors {names_in} -> {names_out} differ from the spec")
    # producer_name stays "pytorch": onnxruntime's optimizer checks it to pick its fusion patterns
    meta = {"clipq.network": spec.name}
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    files = [path]
    if n_bytes > EXTERNAL_DATA_BYTES:
        data = path.name + ".data"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data)
        files.append(path.with_name(data))
    else:
        onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))
    log.info("exported %s (%d nodes, opset %d)", path.name, len(model.graph.node), opset)
    return files


def count_ops(path: str | os.PathLike[str]) -> dict[str, int]:
    """Node count per op type of an ONNX graph (for reports: what a pass fused or quantised)."""
    import onnx

    counts: dict[str, int] = {}
    for n in onnx.load(str(path), load_external_data=False).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
