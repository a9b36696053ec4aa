"""Unit tests of clipq.serving's server helpers (no server started): the launcher's log parsing, libpython,
free ports, the backend directory it prepares and the repository layout it reads.

The rendering tests are in ``tests/unit/test_serving.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _require import require_module

from clipq.runtime.errors import (
    ClipqError,
)
from clipq.serving import is_repository
from clipq.serving.layout import BACKEND_SOURCE, repository_layout
from clipq.serving.repository import (
    REPOSITORY_FILE,
)

require_module("tritonclient.grpc")


@pytest.fixture(scope="module")
def artifacts(tiny_artifacts) -> Path:
    """The shared tiny exported artifacts (tests/conftest.py)."""
    return Path(tiny_artifacts)


# -- server helpers (no process started) -----------------------------------------------------------
def test_harmless_cuda_messages_are_recognised():
    from clipq.serving.server import is_harmless

    assert is_harmless('W1125 pinned_memory_manager.cc:273] "Unable to allocate pinned system memory, pinned '
                       'memory pool will not be available: CUDA driver version is insufficient"')
    assert is_harmless('E1125 server.cc:241] "CudaDriverHelper has not been initialized."')
    assert is_harmless('I1125 cuda_memory_manager.cc:117] "CUDA memory pool disabled"')
    assert not is_harmless("E1125 model_lifecycle.cc:642] \"failed to load 'clip_image' version 1: ...\"")


def test_model_errors_are_parsed_from_the_log(tmp_path):
    from clipq.serving.server import TritonServer

    s = TritonServer(tmp_path)
    s.log.extend([
        'E1125 20:23:22.052685 11628 model_lifecycle.cc:642] "failed to load \'clip_image\' version 1: Internal: '
        'TritonModelException: clip_image: ArtifactError: sha256 of model.onnx is 83b5..., the manifest says 1e1f... '
        '(file changed or corrupt)\\n\\nAt:\\n  /b/clipq/model.py(174): initialize\\n"',
        "E1125 20:23:23.152773 11628 model_repository_manager.cc:703] \"Invalid argument: ensemble 'ask' depends on "
        "'clip_image' which has no loaded version.\"",
    ])
    errors = s.model_errors()
    assert list(errors) == ["clip_image"]
    assert errors["clip_image"].endswith("(file changed or corrupt)")
    msg = s._failure_message("tritonserver exited during start-up")
    assert "clip_image" in msg and "sha256" in msg and "At:" not in msg


def test_find_libpython_and_free_port(tmp_path, monkeypatch):
    import ctypes
    import sysconfig

    from _require import PYMINOR, missing

    from clipq.serving.launcher import find_libpython, free_port

    lib = find_libpython()
    if lib is None:
        missing(f"libpython{PYMINOR}.so.1.0 is not found", f"`make libpython` (apt-get install libpython{PYMINOR})")
    assert lib.name == f"libpython{PYMINOR}.so.1.0" and lib.is_file()
    # the library the stub will load is this interpreter's version: it exports its version string
    get_version = ctypes.CDLL(str(lib)).Py_GetVersion
    get_version.restype = ctypes.c_char_p
    assert get_version().decode().startswith(f"{PYMINOR}.")
    assert find_libpython((3, 99)) is None  # no such Python anywhere
    # the interpreter's own LIBDIR comes first
    fake = tmp_path / "libpython3.99.so.1.0"
    fake.write_bytes(b"")
    real = sysconfig.get_config_var
    monkeypatch.setattr(sysconfig, "get_config_var", lambda k: str(tmp_path) if k == "LIBDIR" else real(k))
    assert find_libpython((3, 99)) == fake
    assert 0 < free_port() < 65536


def test_missing_tritonserver_is_a_clear_error(tmp_path):
    from clipq.serving.launcher import find_tritonserver

    with pytest.raises(ClipqError, match="not found or not executable"):
        find_tritonserver(tmp_path / "nope")


def test_repository_layout_of_rendered_and_plain_repositories(cpu_repo, tmp_path):
    lay = repository_layout(cpu_repo.path)
    assert lay.rendered and lay.models == cpu_repo.model_repository and lay.backend == cpu_repo.backend_dir
    assert lay.model_names() == sorted(cpu_repo.models) and is_repository(cpu_repo.path)
    plain = tmp_path / "plain"
    (plain / "m" / "1").mkdir(parents=True)
    (plain / "m" / "config.pbtxt").write_text('name: "m"')
    lay = repository_layout(plain)
    assert not lay.rendered and lay.models == plain and lay.backend == BACKEND_SOURCE.parent
    assert lay.model_names() == ["m"] and is_repository(plain) and not is_repository(tmp_path / "nope")


def _fake_installation(tmp_path: Path, source: str):
    from clipq.serving.launcher import TritonInstallation

    root = tmp_path / source
    (root / "python_backend").mkdir(parents=True)
    (root / "python_backend" / "libtriton_python.so").write_bytes(b"lib")
    (root / "python_backend" / "triton_python_backend_utils.py").write_text("#")
    (root / "stubs" / "3.11").mkdir(parents=True)
    for minor in range(8, 15):
        (root / "stubs" / f"3.{minor}").mkdir(exist_ok=True)
        (root / "stubs" / f"3.{minor}" / "triton_python_backend_stub").write_bytes(b"stub")
    for name in ("python", "onnxruntime", "clipq"):
        (root / "backends" / name).mkdir(parents=True)
    if source == "pytriton":
        return TritonInstallation(binary=root / "tritonserver", source="pytriton",
                                  python_backend=root / "python_backend", stubs_dir=root / "stubs")
    return TritonInstallation(binary=root / "tritonserver", source="system", backends_dir=root / "backends")


def test_backend_directory_holds_copies_of_the_python_backend_and_the_clipq_backend(cpu_repo, tmp_path):
    """Triton refuses a backend library reached through a symlinked file: the library files are copies.

    The stub executable is a link to the installed one: a copy is open for writing for a moment, and a
    process forked by any thread then makes tritonserver's exec of it fail with "Text file busy"."""
    from clipq.serving.launcher import prepare_backends

    inst = _fake_installation(tmp_path, "pytriton")
    b = prepare_backends(inst, cpu_repo.backend_dir, tmp_path / "run")
    assert sorted(p.name for p in b.iterdir()) == ["clipq", "python"]
    stub = b / "python" / "triton_python_backend_stub"
    for f in [*(b / "python").iterdir(), b / "clipq" / "model.py"]:
        assert f.is_file() and f.is_symlink() == (f == stub), f
    assert stub.resolve() == inst.stub_for().resolve()
    assert sorted(f.name for f in (b / "python").iterdir()) == [
        "libtriton_python.so", "triton_python_backend_stub", "triton_python_backend_utils.py"]
    assert (b / "clipq" / "model.py").read_bytes() == BACKEND_SOURCE.read_bytes()

    # a system installation (the NGC container): its backends linked, ours replacing any clipq/ it has
    inst = _fake_installation(tmp_path, "system")
    b = prepare_backends(inst, cpu_repo.backend_dir, tmp_path / "run2")
    assert sorted(p.name for p in b.iterdir()) == ["clipq", "onnxruntime", "python"]
    assert (b / "onnxruntime").is_symlink() and (b / "python").is_symlink()
    assert not (b / "clipq").is_symlink() and (b / "clipq" / "model.py").read_bytes() == BACKEND_SOURCE.read_bytes()
    with pytest.raises(ClipqError, match="clipq Python-based backend is missing"):
        prepare_backends(inst, tmp_path / "no_backend", tmp_path / "run3")


def test_repository_info_records_how_it_was_rendered(cpu_repo):
    info = json.loads((cpu_repo.path / REPOSITORY_FILE).read_text())
    assert info["flavour"] == "cpu-python" and info["options"]["dynamic_batching"] is True
    assert set(info["models"]) == set(cpu_repo.models)
