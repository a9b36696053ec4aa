"""The engines ``clipq bench --target models`` compares, each built inside its own worker process.

:func:`make` is the worker factory (:class:`clipq.export.timing.ProcessEngine`): it builds one
engine for one network and returns ``feeds -> output``. Each peer is set up as its own documentation
says, with only the thread count pinned (the same for all):

- ``pytorch_eager``: ``CLIPModel.from_pretrained`` + ``get_image_features`` / ``get_text_features``
  under ``inference_mode`` (clipq's own modules for VQA and the regressor: no transformers equivalent);
- ``torch_bf16``: the same under ``torch.autocast("cpu", dtype=torch.bfloat16)``, only where the CPU
  has AVX512-BF16 or AMX (elsewhere bf16 autocast is slower than fp32: recorded as skipped);
- ``torch_compile``: ``torch.compile`` (inductor, default mode) of the same module; compiled per
  batch shape in the untimed warm-up;
- ``optimum_ort``: optimum's ``ORTModelForFeatureExtraction`` (the CLIP vision tower only);
- ``ort_default``: plain onnxruntime, default session options, on the default export;
- ``ort_optimum_int8``: onnxruntime dynamic int8 as optimum's ``ORTQuantizer`` makes it
  (``AutoQuantizationConfig.avx512_vnni`` / ``avx2`` by the CPU's flags, ``is_static=False``);
- ``ov_plain``: OpenVINO compiling the same plain ONNX with default hints;
- ``ov_nncf_int8``: OpenVINO + NNCF int8 on that ONNX as NNCF's documentation shows it
  (``nncf.quantize(model, nncf.Dataset(real items), model_type=TRANSFORMER)``); optimum-intel's
  ``OVModelForFeatureExtraction`` path where optimum-intel is importable (see :func:`_nncf_int8`);
- ``clipq_fp32`` / ``clipq_opt`` / ``clipq_int8``: clipq's graphs through its runtime backend;
- ``clipq_default``: ``clipq.runtime.connect(artifacts)``: the CPU default recorded by the export's
  measurement (engine and variant per network).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

PYTORCH = ("pytorch_eager", "torch_bf16", "torch_compile")
#: what each engine computes in (for the achieved-TOPS figures); clipq_default / ov_plain are looked up
PRECISION = {"pytorch_eager": "fp32", "torch_bf16": "bf16", "torch_compile": "fp32", "optimum_ort": "fp32",
             "ort_default": "fp32", "ort_optimum_int8": "int8", "ov_nncf_int8": "int8", "clipq_fp32": "fp32",
             "clipq_opt": "fp32", "clipq_int8": "int8"}


def _manifest(root: str) -> Any:
    from clipq.runtime.manifest import Manifest

    return Manifest.load(root)


def _hf_clip(m: Any) -> Any:
    """The checkpoint as plain transformers loads it (CLIPModel: its default attention, not clipq's eager),
    with the ResNet tower's stem flag applied (transformers' ResNet has no such option: without it the
    peers would run a different, max-pooled network from the same weights)."""
    from transformers import AutoModel

    from clipq.models.factory import apply_stem_pool

    return apply_stem_pool(AutoModel.from_pretrained(m.resolve_dir(m.checkpoints["clip"]))).eval()


def _torch_module(m: Any, name: str) -> Any:
    """(module, input names): the tower as transformers gives it, or clipq's own network."""
    if name in ("clip_image", "clip_text"):
        from clipq.models.export_wrappers import ClipImageTower, ClipTextTower

        return (ClipImageTower if name == "clip_image" else ClipTextTower)(_hf_clip(m)).eval()
    from clipq.models.io import load_for_export

    return load_for_export(m.root)[name].eval()


def _torch(m: Any, name: str, engine: str, threads: int) -> Any:
    import torch
    import torch.nn.functional as F

    from clipq.models.factory import image_features, text_features
    from clipq.runtime.backends.common import cpu_facts

    torch.set_num_threads(threads)
    if engine == "torch_bf16":
        flags = cpu_facts()["flags"]
        if not (flags.get("avx512_bf16") or flags.get("amx_bf16")):
            raise LookupError("skipped: no bf16 on this CPU (neither avx512_bf16 nor amx_bf16)")
    spec = m.model(name)
    if engine == "pytorch_eager" and name in ("clip_image", "clip_text"):
        clip = _hf_clip(m)

        def eager(feeds: dict[str, np.ndarray]) -> Any:
            with torch.inference_mode():
                if name == "clip_image":
                    out = image_features(clip, torch.from_numpy(feeds["pixel_values"]))
                else:
                    out = text_features(clip, torch.from_numpy(feeds["input_ids"]),
                                        torch.from_numpy(feeds["attention_mask"]))
                return F.normalize(out, dim=-1).numpy()

        return eager
    module = _torch_module(m, name)
    if engine == "torch_compile":
        module = torch.compile(module)
    names = [t.name for t in spec.inputs]

    def run(feeds: dict[str, np.ndarray]) -> Any:
        args = [torch.from_numpy(feeds[n]) for n in names]
        with torch.inference_mode():
            if engine == "torch_bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return module(*args).float().numpy()
            return module(*args).float().numpy()

    return run


def default_export(m: Any, name: str, work: Path) -> Path:
    """The peer graph: the towers as transformers loads them, exported with torch.onnx defaults."""
    spec = m.model(name)
    if name not in ("clip_image", "clip_text"):
        return m.root / spec.file  # clipq's own networks: no other export exists
    path = work / f"{name}.default.onnx"
    if not path.is_file():
        from clipq.export.graphs import export_onnx
        from clipq.export.samples import SampleFactory

        export_onnx(_torch_module(m, name), spec, path, SampleFactory(m).inputs(spec, 2))
    return path


def _ort_runner(path: Path, threads: int, spec: Any) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()  # onnxruntime's defaults; only the thread count pinned
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    out = sess.get_outputs()[0].name
    return lambda feeds: sess.run([out], {n: feeds[n] for n in names})[0]


def _optimum_int8(m: Any, name: str, work: Path) -> Path:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    from clipq.runtime.backends.common import cpu_facts

    d = work / f"optimum_int8_{name}"
    out = d / "q" / "model_quantized.onnx"
    if not out.is_file():
        d.mkdir(parents=True, exist_ok=True)
        src = d / "model.onnx"
        if not src.is_file():
            shutil.copyfile(default_export(m, name, work), src)
        flags = cpu_facts()["flags"]
        make = AutoQuantizationConfig.avx512_vnni if flags.get("avx512_vnni") else AutoQuantizationConfig.avx2
        cfg = make(is_static=False, per_channel=False)
        ORTQuantizer.from_pretrained(d, file_name="model.onnx").quantize(save_dir=d / "q", quantization_config=cfg)
    return out


def _ov_runner(path: Path, threads: int) -> tuple[Any, dict[str, Any]]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})  # default hints otherwise
    req = compiled.create_infer_request()
    names = set().union(*(p.get_names() for p in compiled.inputs))
    out = compiled.output(0)
    precision = compiled.get_property("INFERENCE_PRECISION_HINT")  # what OpenVINO chose by default here

    def run(feeds: dict[str, np.ndarray]) -> Any:
        return np.asarray(req.infer({n: a for n, a in feeds.items() if n in names})[out])

    return run, {"precision": "bf16" if precision == ov.Type.bf16 else "fp32"}


def _nncf_int8(m: Any, name: str, work: Path) -> Path:
    """NNCF int8 of the plain ONNX graph, calibrated on the built-in real sample (NNCF's documented path).

    optimum-intel's ``OVModelForFeatureExtraction.from_pretrained(..., quantization_config=...)`` is
    the same NNCF call behind a transformers-shaped API; here it cannot be installed beside clipq's
    optimum-onnx (optimum-intel 2.2 pins optimum~=2.3, optimum-onnx 0.1 pins optimum~=2.1), and its
    feature-extraction export of the vision tower returns hidden states, not the embedding.
    """
    import nncf
    import openvino as ov

    from clipq.export.calibration import CalibrationSample
    from clipq.export.samples import SampleFactory

    out = work / f"{name}.nncf_int8.xml"
    if not out.is_file():
        s = CalibrationSample.builtin()
        spec = m.model(name)
        f = SampleFactory(m, seed=11, images=s.images, texts=s.texts, image_embedder=_embedder(m) if name == "vqa" else None)
        items = [f.inputs(spec, 1, offset=i) for i in range(64)]
        model = ov.convert_model(str(default_export(m, name, work)))
        q = nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(items))
        ov.save_model(q, str(out))
    return out


def _embedder(m: Any) -> Any:
    from clipq.runtime.backends.ort import OrtBackend

    b = OrtBackend(m, variant="fp32", threads=1)
    return lambda px: b.infer("clip_image", {"pixel_values": px})["image_embeds"]


def make(root: str, work: str, network: str, engine: str, threads: int) -> Any:
    """Worker factory: ``engine`` for ``network`` (see the module docstring); ``(fn, info)``.

    Raises:
        LookupError: the engine does not apply to this network or machine (the message says why).
        ImportError: the engine's package is not installed.
    """
    m, w = _manifest(root), Path(work)
    w.mkdir(parents=True, exist_ok=True)
    spec = m.model(network)
    info: dict[str, Any] = {"precision": PRECISION.get(engine, "fp32")}
    if engine in PYTORCH:
        return _torch(m, network, engine, threads), info
    if engine == "optimum_ort":
        if network != "clip_image":
            raise LookupError("optimum exports no stand-alone graph for this network")
        if str(m.extra.get("family", "clip")).startswith("siglip"):
            raise LookupError("optimum's ORTModelForFeatureExtraction has no SigLIP vision export here")
        from optimum.onnxruntime import ORTModelForFeatureExtraction
        from transformers import CLIPVisionModel

        d = w / "optimum_clip_vision"
        if not (d / "model.onnx").is_file():
            src = w / "hf_clip_vision"
            CLIPVisionModel.from_pretrained(m.resolve_dir(m.checkpoints["clip"])).save_pretrained(src)
            ORTModelForFeatureExtraction.from_pretrained(src, export=True).save_pretrained(d)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        model = ORTModelForFeatureExtraction.from_pretrained(d, session_options=so, provider="CPUExecutionProvider")
        # optimum's feature-extraction output is the hidden states (no projection): timed, not compared
        return (lambda feeds: model(pixel_values=feeds["pixel_values"]).last_hidden_state), {**info, "compare": False}
    if engine == "ort_default":
        return _ort_runner(default_export(m, network, w), threads, spec), info
    if engine == "ort_optimum_int8":
        return _ort_runner(_optimum_int8(m, network, w), threads, spec), info
    if engine == "ov_plain":
        fn, got = _ov_runner(default_export(m, network, w), threads)
        return fn, {**info, **got}
    if engine == "ov_nncf_int8":
        fn, _ = _ov_runner(_nncf_int8(m, network, w), threads)
        return fn, info
    from clipq.runtime.backends.ort import OrtBackend
    from clipq.runtime.connect import connect

    if engine == "clipq_default":
        backend = connect(m, threads=threads)
        from clipq.runtime.backends.routed import RoutedBackend

        b = backend.backend_for(network) if isinstance(backend, RoutedBackend) else backend
        variant = b.variant_for(network)
        desc = b.engine_info(network) if hasattr(b, "engine_info") else {"engine": "onnxruntime", "variant": variant}
        prec = desc.get("precision") or "fp32"
        info = {"precision": "int8" if "int8" in variant else ("bf16" if prec == "bf16" else "fp32"),
                "choice": f"{desc.get('engine', 'onnxruntime')}/{variant}"}
    else:
        variant = {"clipq_fp32": "fp32", "clipq_opt": "opt", "clipq_int8": "int8"}[engine]
        if variant == "opt" and "opt" not in spec.variants:
            variant = _optimized(m, network, w)
        elif variant != "fp32" and variant not in spec.variants:
            raise LookupError(f"the export wrote no {variant} graph")
        backend = OrtBackend(m, variant={network: variant}, threads=threads) if not isinstance(variant, Path) else None
        if backend is None:
            return _ort_runner(variant, threads, spec), info
    out = spec.outputs[0].name
    return (lambda feeds: backend.infer(network, feeds)[out]), info


def _optimized(m: Any, name: str, work: Path) -> Path:
    """onnxruntime's transformer optimizer on clipq's fp32 graph (measured whether adopted or not)."""
    from clipq.export.optimize import MODEL_TYPES, transformer_optimize

    path = work / f"{name}.opt.onnx"
    if not path.is_file():
        transformer_optimize(m.root / m.model(name).file, path, MODEL_TYPES[name])
    return path
