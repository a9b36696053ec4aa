"""Unit tests of clipq.serving (no server): repository rendering, config validity, helpers.

Every rendered ``config.pbtxt`` is parsed into Triton's own ``ModelConfig`` message, the ensembles
are checked as dataflow graphs, the one ``clipq`` backend and the one copy of each tokenizer are
checked, and the checked-in ``triton_models/`` is compared with what the renderer writes today.
The remote client's tests that need no server are in ``tests/integration/test_remote.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _require import require_module

from clipq.runtime.errors import (
    ArtifactError,
)
from clipq.runtime.manifest import Manifest
from clipq.serving import RenderOptions, is_repository, read_repository_info, render_repository
from clipq.serving.layout import BACKEND_SOURCE, repository_layout
from clipq.serving.pbtxt import Enum, dumps, parse
from clipq.serving.repository import (
    ENSEMBLES,
    REPOSITORY_FILE,
    expected_configs,
    plan_models,
)

require_module("tritonclient.grpc")
REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = REPO_ROOT / "triton_models"


@pytest.fixture(scope="module")
def artifacts(tiny_artifacts) -> Path:
    """The shared tiny exported artifacts (tests/conftest.py)."""
    return Path(tiny_artifacts)


@pytest.fixture(scope="module")
def gpu_repo(artifacts, tmp_path_factory):
    return render_repository(artifacts, tmp_path_factory.mktemp("repo_gpu") / "models", RenderOptions(flavour="gpu"))


def _configs(repo: Path) -> dict:
    """Every model's parsed config of a rendered repository (its ``models/``)."""
    models = repository_layout(repo).models
    return {d.name: parse((d / "config.pbtxt").read_text()) for d in sorted(models.iterdir())
            if (d / "config.pbtxt").is_file()}


def _single_backend_and_tokenizers(repo: Path) -> None:
    """No model has a model.py of its own; one backend file; each tokenizer once, outside the models."""
    models = repo / "models"
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("model.py")) == ["backends/clipq/model.py"]
    assert (repo / "backends" / "clipq" / "model.py").read_bytes() == BACKEND_SOURCE.read_bytes()
    assert not list(models.rglob("tokenizer*.json")), "tokenizers must not be copied into model directories"
    shared = Manifest.load(repo / "tokenizers")
    shared.verify_all()
    files = sorted(shared.files)
    assert len({shared.files[f]["sha256"] for f in files}) == len(files), "a tokenizer file is stored twice"
    for name, cfg in _configs(repo).items():
        if cfg.backend:
            assert cfg.backend == "clipq", name
        if "clipq_tokenizer" in cfg.parameters:  # a tokenize model's manifest, a fused model's tokenizers
            key = "clipq_tokenizers" if "clipq_tokenizers" in cfg.parameters else "clipq_manifest"
            where = (models / name / cfg.parameters[key].string_value).resolve()
            assert where == (repo / "tokenizers").resolve(), name
            assert cfg.parameters["clipq_tokenizer"].string_value in shared.tokenizers


# -- pbtxt ---------------------------------------------------------------------------------------
def test_pbtxt_round_trips_through_modelconfig():
    text = dumps({"name": "m", "backend": "python", "max_batch_size": 4,
                  "input": [{"name": "x", "data_type": Enum("TYPE_FP32"), "dims": [3, -1]}],
                  "output": [{"name": "y", "data_type": Enum("TYPE_STRING"), "dims": [1]}],
                  "parameters": [{"key": "k", "value": {"string_value": 'quote " and \\ backslash'}}],
                  "empty": [], "skipped": None}, header=["a comment"])
    assert text.startswith("# a comment\n")
    cfg = parse(text)
    assert cfg.name == "m" and cfg.max_batch_size == 4 and list(cfg.input[0].dims) == [3, -1]
    assert cfg.parameters["k"].string_value == 'quote " and \\ backslash'


def test_pbtxt_rejects_invalid_field():
    from google.protobuf.text_format import ParseError

    with pytest.raises(ParseError):
        parse(dumps({"name": "m", "no_such_field": 1}))


# -- rendering -----------------------------------------------------------------------------------
def test_plan_has_every_model_and_ensemble(artifacts):
    plan = plan_models(Manifest.load(artifacts))
    for name in ("clip_image", "clip_text", "vqa", "img2prompt_a", "ensemble_head", "preprocess_image",
                 "tokenize_clip", "tokenize_lm", "embed_image", "embed_text", "ask", "describe", "ask_embeds",
                 "predict_prompt", "embed_prompt", "knn_prompts", "clipq_info", "reading_image", "reading_text",
                 "read_image", "read_text"):
        assert name in plan, name
    assert plan["knn_prompts"].kind == "knn" and plan["clipq_info"].kind == "info"
    # without Model B's database there is no KNN model and no describe ensemble; the rest stays
    assert not {"knn_prompts", "describe"} & set(plan_models(Manifest.load(artifacts), knn=False))


def test_server_description_is_the_manifest_without_files(cpu_repo, artifacts):
    """clipq_info's document gives a thin client the same facts (dims, vocabulary, model id, specs)."""
    from clipq.runtime.server_path import ServerManifest, manifest_from_info, parse_info
    from clipq.runtime.tasks import ClipEncoder, ReadingModel, VqaModel

    m = Manifest.load(artifacts)
    vdir = cpu_repo.model_repository / "clipq_info" / "1"
    Manifest.load(vdir).resolve("info.json")  # listed with its hash in its own manifest
    info = parse_info(np.array([[(vdir / "info.json").read_bytes()]], dtype=object), "grpc://h:1")
    assert info["models"] == {n: {"kind": k, "max_batch_size": plan_models(m)[n].max_batch_size}
                              for n, k in cpu_repo.models.items()}
    # Model B's data facts in "knn", its settings as the manifest's record (one home)
    knn = json.loads((artifacts / "knn" / "knn.json").read_text())
    assert info["knn"] == {"count": knn["count"], "prompt_dim": knn["prompt_dim"]}
    assert info["manifest"]["extra"]["img2prompt"] == m.extra["img2prompt"]
    thin = manifest_from_info(info, "grpc://h:1", "grpc:h:1")
    assert isinstance(thin, ServerManifest) and thin.dims == m.dims and thin.answer_vocab == m.answer_vocab
    assert thin.models == {n: m.models[n] for n in thin.models} and set(thin.models) == set(m.models)
    assert thin.tokenizers == m.tokenizers and thin.preprocessing == m.preprocessing
    assert str(artifacts) not in (vdir / "info.json").read_text(), "no path into the artifacts"

    class Local:  # ClipEncoder reads facts only at construction: no server needed
        def __init__(self, manifest):
            self.manifest = manifest

    assert ClipEncoder(Local(thin)).model_id == ClipEncoder(Local(m)).model_id
    assert VqaModel(Local(thin)).vocab == m.answer_vocab
    reader = ReadingModel(Local(thin))  # the candidates and the template come with the description
    assert (reader.candidates, reader.template) == (m.extra["reading"]["candidates"], m.extra["reading"]["text"])
    with pytest.raises(ArtifactError, match="not on this machine"):
        thin.resolve("tokenizer/clip/tokenizer.json")
    with pytest.raises(ArtifactError, match="schema"):
        parse_info(np.array([[json.dumps({**info, "schema_version": 99}).encode()]], dtype=object), "u")


def test_knn_model_holds_model_b_and_the_head(cpu_repo, artifacts):
    from clipq.runtime.fusion import KnnPromptFusion

    vdir = cpu_repo.model_repository / "knn_prompts" / "1"
    mini = Manifest.load(vdir)
    mini.verify_all()
    want = sorted(k for k in Manifest.load(artifacts).files if k.startswith("knn/"))
    assert sorted(k for k in mini.files if k.startswith("knn/")) == want
    assert mini.models["ensemble_head"].file == "ensemble_head.onnx"
    assert KnnPromptFusion.load(mini.resolve_dir("knn")).ids == KnnPromptFusion.load(artifacts / "knn").ids
    cfg = parse((cpu_repo.model_repository / "knn_prompts" / "config.pbtxt").read_text())
    assert cfg.backend == "clipq" and cfg.parameters["clipq_role"].string_value == "knn"
    # the warm-up is a real query (unit vectors, one prompt), not zeros that Model B would refuse
    files = {k: v.input_data_file for k, v in cfg.model_warmup[0].inputs.items()}
    n = np.frombuffer((cpu_repo.model_repository / "knn_prompts" / "warmup" / files["n"]).read_bytes(), "<i4")
    assert set(files) == {"image_embeds", "a_embeds", "alpha", "n"} and n.tolist() == [1]


@pytest.mark.parametrize("flavour", ["cpu-python", "gpu"])
def test_every_config_is_a_valid_modelconfig(flavour, cpu_repo, gpu_repo):
    repo = cpu_repo if flavour == "cpu-python" else gpu_repo
    configs = _configs(repo.path)
    assert set(configs) == set(repo.models)
    for name, cfg in configs.items():
        assert cfg.name == name
        assert cfg.max_batch_size > 0, name


def test_networks_cpu_python_flavour(cpu_repo, artifacts):
    m = Manifest.load(artifacts)
    configs = _configs(cpu_repo.path)
    for name, kind in cpu_repo.models.items():
        if kind != "network":
            continue
        cfg, spec = configs[name], m.models[name]
        assert cfg.backend == "clipq"
        assert [i.name for i in cfg.input] == [t.name for t in spec.inputs]
        assert [list(i.dims) for i in cfg.input] == [list(t.shape[1:]) for t in spec.inputs]
        assert [o.name for o in cfg.output] == [t.name for t in spec.outputs]
        assert cfg.max_batch_size == spec.max_batch_size
        db = cfg.dynamic_batching
        assert list(db.preferred_batch_size) and all(b <= cfg.max_batch_size for b in db.preferred_batch_size)
        assert db.max_queue_delay_microseconds > 0
        assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
        assert cfg.version_policy.latest.num_versions == 1
        assert len(cfg.model_warmup) == 1 and all(-1 not in v.dims for v in cfg.model_warmup[0].inputs.values())
        assert cfg.parameters["clipq_role"].string_value == "network"
        assert cfg.parameters["clipq_engine"].string_value == "onnxruntime"
        assert cfg.parameters["clipq_providers"].string_value == "CPUExecutionProvider"
        variant = cfg.parameters["clipq_variant"].string_value
        assert cfg.parameters["clipq_sha256"].string_value == m.files[spec.file_for(variant)]["sha256"]
        # the version directory is a valid clipq manifest whose hash check passes
        mini = Manifest.load(cpu_repo.model_repository / name / "1")
        mini.resolve(mini.models[name].file)
        assert not (cpu_repo.model_repository / name / "1" / "model.py").exists()
        assert not (cpu_repo.model_repository / name / "model.py").exists()
    _single_backend_and_tokenizers(cpu_repo.path)


def test_gpu_flavour_uses_onnxruntime_with_tensorrt(gpu_repo):
    configs = _configs(gpu_repo.path)
    for name, kind in gpu_repo.models.items():
        cfg = configs[name]
        if kind == "network":
            assert cfg.platform == "onnxruntime_onnx" and cfg.default_model_filename == "model.onnx"
            assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
            trt = cfg.optimization.execution_accelerators.gpu_execution_accelerator[0]
            assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
            for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
                shapes = dict(s.split(":") for s in trt.parameters[key].split(","))
                assert set(shapes) == {i.name for i in cfg.input}
            assert (gpu_repo.model_repository / name / "1" / "model.onnx").is_file()
            assert not (gpu_repo.model_repository / name / "1" / "model.py").exists()
        elif kind in ("preprocess_image", "tokenize"):
            assert cfg.backend == "clipq" and cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
    _single_backend_and_tokenizers(gpu_repo.path)


def test_no_dynamic_batching_option(artifacts, tmp_path):
    r = render_repository(artifacts, tmp_path / "r", RenderOptions(dynamic_batching=False, warmup=False),
                          models=["clip_image"])
    cfg = parse((r.model_repository / "clip_image" / "config.pbtxt").read_text())
    assert not cfg.HasField("dynamic_batching") and not cfg.model_warmup


@pytest.mark.parametrize("flavour", ["cpu-python", "gpu"])
def test_ensembles_are_consistent_dataflow_graphs(flavour, cpu_repo, gpu_repo):
    """Every step's model exists, maps only tensors it has, and consumes tensors produced earlier."""
    repo = cpu_repo if flavour == "cpu-python" else gpu_repo
    configs = _configs(repo.path)
    for e in ENSEMBLES:
        if repo.models.get(e.name) != "ensemble":  # absent, or a fused model (tested below)
            continue
        cfg = configs[e.name]
        assert cfg.platform == "ensemble"
        available = {i.name: (i.data_type, list(i.dims)) for i in cfg.input}
        for step in cfg.ensemble_scheduling.step:
            sub = configs[step.model_name]
            assert cfg.max_batch_size <= sub.max_batch_size
            sub_in = {i.name: (i.data_type, list(i.dims)) for i in sub.input}
            for model_tensor, ens_tensor in step.input_map.items():
                assert ens_tensor in available, f"{e.name}: {ens_tensor} used before it is produced"
                dtype, dims = sub_in[model_tensor]
                assert available[ens_tensor][0] == dtype
                assert len(available[ens_tensor][1]) == len(dims)
                assert all(a == b or -1 in (a, b) for a, b in zip(available[ens_tensor][1], dims))
            assert set(step.input_map) == set(sub_in), f"{e.name}: {step.model_name} inputs not all fed"
            sub_out = {o.name: (o.data_type, list(o.dims)) for o in sub.output}
            for model_tensor, ens_tensor in step.output_map.items():
                available[ens_tensor] = sub_out[model_tensor]
        for o in cfg.output:
            assert available[o.name] == (o.data_type, list(o.dims))


def test_render_is_deterministic_and_replaces_only_clipq_repositories(artifacts, tmp_path):
    a = render_repository(artifacts, tmp_path / "a").path
    first = {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file()}
    render_repository(artifacts, a)  # re-render in place (swap)
    second = {p.relative_to(a): p.read_bytes() for p in a.rglob("*") if p.is_file()}
    assert first == second
    assert not list(tmp_path.glob(".a.*")), "temporary directories left behind"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("x")
    with pytest.raises(ArtifactError, match="not rendered by clipq"):
        render_repository(artifacts, foreign)
    assert (foreign / "precious.txt").exists()


def test_tokenizers_with_the_same_files_share_one_copy(artifacts, tmp_path):
    m = Manifest.load(artifacts)
    m.tokenizers = {**m.tokenizers, "prompt": {**m.tokenizers["prompt"], "path": m.tokenizers["lm"]["path"]}}
    r = render_repository(m, tmp_path / "r", RenderOptions(warmup=False),
                          models=["vqa", "prompt_text", "tokenize_lm", "tokenize_prompt"])
    shared = Manifest.load(r.path / "tokenizers")
    assert sorted(shared.tokenizers) == ["lm", "prompt"]
    assert shared.tokenizers["lm"]["path"] == shared.tokenizers["prompt"]["path"] == "lm"
    assert shared.tokenizers["prompt"]["max_length"] == m.tokenizers["prompt"]["max_length"]  # settings stay per tokenizer
    assert [p.relative_to(r.path).as_posix() for p in (r.path / "tokenizers").rglob("*.json")
            if p.name != "manifest.json"] == ["tokenizers/lm/tokenizer.json"]
    from clipq.runtime.text import TextTokenizer

    assert TextTokenizer.from_manifest(shared, "prompt").max_length == m.tokenizers["prompt"]["max_length"]


def test_gpu_flavour_with_tensorrt_plans_needs_a_plan_variant(artifacts, tmp_path):
    with pytest.raises(ArtifactError, match="plan"):
        render_repository(artifacts, tmp_path / "r", RenderOptions(flavour="gpu", gpu_backend="tensorrt"),
                          models=["clip_image"])


def test_gpu_flavour_renders_tensorrt_plan_from_a_plan_variant_and_onnxruntime_otherwise(tiny_artifacts_copy):
    """An engine registered the way export registers it becomes a tensorrt_plan model; every config parses."""
    from clipq.export.tensorrt import CACHE_DIR, register_plan
    from clipq.runtime.backends.ort import batch_profile, trt_cache_key
    from clipq.runtime.manifest import sha256_file

    root = Path(tiny_artifacts_copy)
    m = Manifest.load(root)
    fp = {"gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt": "10.3.0"}
    prof = batch_profile(m, m.models["clip_image"])
    key = trt_cache_key(m.files[m.models["clip_image"].file]["sha256"], prof, True, fp)
    plan = root / CACHE_DIR / key / "clip_image.plan"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"not a real engine: rendering never reads it")
    rel = register_plan(m, "clip_image", plan, key=key, profile=prof, tensorrt_version="10.3.0", fingerprint=fp)
    m.save()
    m = Manifest.load(root)  # it survives the manifest round trip
    spec = m.models["clip_image"]
    assert spec.variants["plan"] == rel == f"{CACHE_DIR}/{key}/clip_image.plan" and m.files[rel]["sha256"]
    assert spec.meta["plan"]["key"] == key and spec.meta["plan"]["tensorrt"] == "10.3.0"
    assert spec.meta["plan"]["profile"]["max"]["pixel_values"][0] == spec.max_batch_size
    with pytest.raises(ArtifactError, match="not inside"):
        register_plan(m, "clip_image", Path("/tmp/elsewhere.plan"), key=key, profile=prof, tensorrt_version="x")

    repo = render_repository(m, root.parent / "gpu", RenderOptions(flavour="gpu"))
    configs = _configs(repo.path)
    assert set(configs) == set(repo.models)  # every config.pbtxt parsed as Triton's ModelConfig
    for name, kind in repo.models.items():
        cfg = configs[name]
        if kind != "network":
            continue
        vdir = repo.model_repository / name / "1"
        if name == "clip_image":
            assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
            assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator
            assert cfg.parameters["clipq_variant"].string_value == "plan"
            assert cfg.parameters["clipq_sha256"].string_value == sha256_file(plan)
            assert (vdir / "model.plan").read_bytes() == plan.read_bytes() and not (vdir / "model.onnx").exists()
        else:
            assert cfg.platform == "onnxruntime_onnx" and (vdir / "model.onnx").is_file()
            assert cfg.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
        assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    assert expected_configs(repo.path) == {n: (repo.model_repository / n / "config.pbtxt").read_text()
                                           for n in repo.models}
    # forced to onnxruntime, the plan is ignored
    ort_only = render_repository(m, root.parent / "gpu_ort", RenderOptions(flavour="gpu", gpu_backend="onnxruntime"),
                                 models=["clip_image"])
    assert _configs(ort_only.path)["clip_image"].platform == "onnxruntime_onnx"


def test_tensorrt_without_a_gpu_builds_and_registers_nothing(tiny_artifacts_copy):
    from clipq.export.tensorrt import TensorRTStatus, build_engines

    m = Manifest.load(tiny_artifacts_copy)
    out = build_engines(m, status=TensorRTStatus(False, "", "no NVIDIA GPU visible"))
    assert out == {"status": "no NVIDIA GPU visible", "available": False, "engines": {}}
    assert not any("plan" in s.variants for s in m.models.values())
    assert not (Path(tiny_artifacts_copy) / "trt_cache").exists()


def test_renderers_are_registered_by_flavour_with_a_method_per_kind():
    from clipq.serving.plan import KINDS
    from clipq.serving.renderers import FLAVOURS, RENDERERS

    assert FLAVOURS == ("cpu-python", "gpu") and set(RENDERERS) == set(FLAVOURS)
    for cls in RENDERERS.values():
        for kind in KINDS:
            assert callable(getattr(cls, kind)) and callable(getattr(cls, f"write_{kind}")), (cls, kind)


def test_render_refuses_a_changed_graph(tiny_artifacts_copy, tmp_path):
    copy = Path(tiny_artifacts_copy)
    m = Manifest.load(copy)
    p = copy / m.models["clip_image"].file_for()  # the variant the renderer serves by default
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        render_repository(copy, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_unknown_variant_is_a_clear_error(artifacts, tmp_path):
    with pytest.raises(ArtifactError, match="no 'nope' variant"):
        render_repository(artifacts, tmp_path / "r", RenderOptions(variant="nope"))


def test_render_options_validation():
    with pytest.raises(ValueError):
        RenderOptions(flavour="tpu")
    with pytest.raises(ValueError):
        RenderOptions(instances=0)
    opt = RenderOptions(flavour="gpu", max_queue_delay_us=100)
    assert RenderOptions.from_dict({**opt.to_dict(), "unknown_future_field": 1}) == opt


def test_expected_configs_detects_a_hand_edit(cpu_repo, tmp_path):
    repo = tmp_path / "r"
    shutil.copytree(cpu_repo.path, repo)
    expected = expected_configs(repo)
    assert all((repo / "models" / n / "config.pbtxt").read_text() == t for n, t in expected.items())
    cfg = repo / "models" / "clip_image" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("max_queue_delay_microseconds: 100", "max_queue_delay_microseconds: 9"))
    assert expected_configs(repo)["clip_image"] != cfg.read_text()


def test_checked_in_repository_is_rendered_not_hand_written():
    assert is_repository(CHECKED_IN)
    info = read_repository_info(CHECKED_IN)
    assert info is not None, f"{CHECKED_IN} must hold {REPOSITORY_FILE}"
    expected = expected_configs(CHECKED_IN)
    assert set(expected) == set(info["models"]) == {d.parent.name for d in CHECKED_IN.glob("models/*/config.pbtxt")}
    for name, text in expected.items():
        assert (CHECKED_IN / "models" / name / "config.pbtxt").read_text() == text, \
            f"{name}/config.pbtxt was edited by hand"
        parse(text)
    # one backend file, no per-model copies, each tokenizer once; in git the backend is a link to
    # serving/backend/model.py, so the source is the one copy (a render writes a real copy)
    _single_backend_and_tokenizers(CHECKED_IN)
    backend = CHECKED_IN / "backends" / "clipq" / "model.py"
    assert backend.is_symlink() and backend.resolve() == BACKEND_SOURCE.resolve()
    for name in info["models"]:
        assert (CHECKED_IN / "models" / name / "1").is_dir(), f"{name}: Triton needs the version directory"


# -- the recorded CPU default, the native openvino backend, fused models -----------------------------
@pytest.fixture(scope="module")
def ov_repo(tiny_ov_artifacts, tmp_path_factory):
    return render_repository(tiny_ov_artifacts, tmp_path_factory.mktemp("repo_ov") / "r")


def test_cpu_python_serves_the_recorded_cpu_default_with_its_fallback(ov_repo, tiny_ov_artifacts, caplog):
    import logging

    from clipq.runtime.backends.common import cpu_facts
    from clipq.runtime.backends.openvino import OpenVinoBackend
    from clipq.runtime.backends.ort import OrtBackend
    from clipq.runtime.engines import CPU_DEFAULT, cpu_routes, open_cpu_default

    src = Manifest.load(tiny_ov_artifacts)
    configs = _configs(ov_repo.path)
    for name in ("clip_image", "clip_text"):
        cfg, spec = configs[name], src.models[name]
        assert cfg.parameters["clipq_engine"].string_value == CPU_DEFAULT
        assert cfg.parameters["clipq_variant"].string_value == "ov_fp32"
        assert cfg.parameters["clipq_sha256"].string_value == src.files[spec.variants["ov_fp32"]]["sha256"]
        vdir = ov_repo.model_repository / name / "1"
        # self-contained: the IR and onnxruntime's default graph, each listed (and hash-checked) in the small manifest
        mini = Manifest.load(vdir)
        mini.verify_all()
        assert {"model.xml", "model.bin", "model.onnx"} <= set(mini.files)
        assert mini.files["model.bin"]["sha256"] == src.files[spec.variants["ov_fp32"][:-4] + ".bin"]["sha256"]
        assert mini.files["model.onnx"]["sha256"] == src.files[spec.file_for(spec.default_variant)]["sha256"]
        # this host: the recorded choice, as in process; another CPU: onnxruntime's default, with the notice
        assert cpu_routes(mini) == {name: ("openvino", "ov_fp32")} == {k: v for k, v in cpu_routes(src).items()
                                                                          if k == name}
        b = open_cpu_default(mini, cpu_only=True, models=[name])
        assert isinstance(b, OpenVinoBackend) and b.engine_info(name)["variant"] == "ov_fp32"
        b.close()
        other = {**cpu_facts(), "cpu": "Another CPU", "flags": {k: not v for k, v in cpu_facts()["flags"].items()}}
        with caplog.at_level(logging.WARNING, logger="clipq"):
            assert cpu_routes(mini, host=other) == {}
        assert "clipq tune-engines" in caplog.text and "Another CPU" in caplog.text
        fb = OrtBackend(mini, models=[name], providers=["CPUExecutionProvider"])
        assert fb.session(name) is not None and mini.models[name].file_for(fb.variant_for(name)) == "model.onnx"
        fb.close()
    # the record re-renders the same configs (the version directory tells which graph is served)
    assert all((ov_repo.model_repository / n / "config.pbtxt").read_text() == t
               for n, t in expected_configs(ov_repo.path).items())


def test_forcing_an_engine_or_variant_ignores_the_record(tiny_ov_artifacts, tmp_path):
    for opts in (RenderOptions(engine="onnxruntime"), RenderOptions(variant="fp32")):
        r = render_repository(tiny_ov_artifacts, tmp_path / str(opts.engine), opts, models=["clip_image"])
        cfg = parse((r.model_repository / "clip_image" / "config.pbtxt").read_text())
        assert cfg.parameters["clipq_engine"].string_value == "onnxruntime"
        assert not (r.model_repository / "clip_image" / "1" / "model.xml").exists()


def test_gpu_flavour_renders_cpu_servers_for_the_native_openvino_backend(tiny_ov_artifacts, tmp_path):
    src = Manifest.load(tiny_ov_artifacts)
    r = render_repository(tiny_ov_artifacts, tmp_path / "ov", RenderOptions(flavour="gpu", gpu_backend="openvino",
                                                                           intra_op_threads=2))
    configs = _configs(r.path)  # every config parses with Triton's ModelConfig
    assert set(configs) == set(r.models)
    for name, kind in r.models.items():
        cfg = configs[name]
        if kind != "network":
            assert cfg.backend in ("clipq", "") and cfg.platform in ("", "ensemble"), name
            continue
        spec = src.models[name]
        assert cfg.backend == "openvino" and not cfg.platform, name
        assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
        assert cfg.parameters["PERFORMANCE_HINT"].string_value == "LATENCY"
        assert cfg.parameters["INFERENCE_NUM_THREADS"].string_value == "2"
        assert "HINT_BF16" not in cfg.parameters  # the export checked these in f32 only
        assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
        vdir = r.model_repository / name / "1"
        if "ov_fp32" in spec.variants:  # the IR, with its weights, listed in the small manifest
            assert cfg.default_model_filename == "model.xml"
            assert cfg.parameters["clipq_sha256"].string_value == src.files[spec.variants["ov_fp32"]]["sha256"]
            assert {"model.xml", "model.bin"} <= set(Manifest.load(vdir).files)
        else:  # no IR: the fp32 ONNX graph, which the openvino backend reads too
            assert cfg.default_model_filename == "model.onnx" and (vdir / "model.onnx").is_file()
    assert configs["embed_image"].platform == "ensemble"  # the networks are not on the clipq backend
    assert all((r.model_repository / n / "config.pbtxt").read_text() == t for n, t in expected_configs(r.path).items())


def test_fused_models_keep_the_ensembles_names_and_tensors(artifacts, cpu_repo, tmp_path):
    ens = render_repository(artifacts, tmp_path / "ens", RenderOptions(pipelines="ensemble"))
    fused, ensembles = _configs(cpu_repo.path), _configs(ens.path)
    assert set(fused) == set(ensembles)
    m = Manifest.load(artifacts)
    for name, (helper, net) in {"embed_image": ("preprocess_image", "clip_image"),
                                "embed_text": ("tokenize", "clip_text"),
                                "read_image": ("preprocess_image", "reading_image"),
                                "read_text": ("tokenize", "reading_text")}.items():
        f, e = fused[name], ensembles[name]
        assert cpu_repo.models[name] == "fused" and ens.models[name] == "ensemble"
        assert e.platform == "ensemble" and f.backend == "clipq"
        assert [(i.name, i.data_type, list(i.dims)) for i in f.input] == [(i.name, i.data_type, list(i.dims))
                                                                          for i in e.input]
        assert [(o.name, o.data_type, list(o.dims)) for o in f.output] == [(o.name, o.data_type, list(o.dims))
                                                                           for o in e.output]
        assert f.max_batch_size == e.max_batch_size
        assert f.parameters["clipq_role"].string_value == "fused"
        assert f.parameters["clipq_helper"].string_value == helper
        assert f.parameters["clipq_network"].string_value == net
        assert f.dynamic_batching.max_queue_delay_microseconds > 0 and list(f.dynamic_batching.preferred_batch_size)
        warm = f.model_warmup[0].inputs[f.input[0].name]
        assert (cpu_repo.model_repository / name / "warmup" / warm.input_data_file).is_file()
        mini = Manifest.load(cpu_repo.model_repository / name / "1")
        mini.resolve(mini.models[net].file)
        assert f.parameters["clipq_sha256"].string_value == m.files[m.models[net].file_for(
            f.parameters["clipq_variant"].string_value)]["sha256"]
    assert Manifest.load(cpu_repo.model_repository / "embed_image" / "1").preprocessing == m.preprocessing
    where = (cpu_repo.model_repository / "embed_text" / fused["embed_text"].parameters["clipq_tokenizers"].string_value)
    assert "clip" in Manifest.load(where.resolve()).tokenizers
    with pytest.raises(ValueError, match="cpu-python"):
        RenderOptions(flavour="gpu", pipelines="fused")
    # a record from before the option rendered ensembles, and re-renders as such
    assert RenderOptions.from_dict({"flavour": "cpu-python"}).fused is False
