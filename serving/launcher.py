"""Find a tritonserver and prepare what it needs to run clipq's models: backends and environment.

Two installations are supported:

- the tritonserver binary shipped in the ``nvidia-pytriton`` wheel (Python backend only). Its
  Python backend needs a stub built for the running Python version next to it, the shared
  ``libpython<major>.<minor>.so.1.0`` of that version, the wheel's bundled libraries on
  ``LD_LIBRARY_PATH``, and the virtual environment's ``bin`` first on ``PATH`` (the stub's embedded
  interpreter finds the environment's packages from there).
- a ``tritonserver`` on ``PATH`` (the NGC container: ``/opt/tritonserver``), whose own backends are
  used as they are.

Either way the server gets a private backend directory (:func:`prepare_backends`) holding the
Python backend and the ``clipq`` Python-based backend (``backends/clipq/model.py``). Triton refuses
a backend library reached through a symlinked *file* ("escapes backend directory"), so files are
copied; a system backend's whole directory may be linked.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from clipq.runtime.errors import ServerError

from .layout import BACKEND_NAME


@dataclass(frozen=True)
class TritonInstallation:
    """Where a tritonserver and its Python backend live.

    Attributes:
        binary: The ``tritonserver`` executable.
        source: ``"pytriton"`` (the wheel's build; backend directory prepared per run) or ``"system"``.
        backends_dir: The server's own backend directory (``system``), if any.
        python_backend: Directory holding ``libtriton_python.so`` (``pytriton``).
        stubs_dir: Directory of per-version Python backend stubs (``pytriton``).
        lib_dirs: Directories of bundled shared libraries to put on ``LD_LIBRARY_PATH``.
    """

    binary: Path
    source: str
    backends_dir: Path | None = None
    python_backend: Path | None = None
    stubs_dir: Path | None = None
    lib_dirs: tuple[Path, ...] = ()

    def has_backend(self, name: str) -> bool:
        """Whether a backend (``python``, ``onnxruntime``, ``tensorrt``) is available."""
        if self.source == "pytriton":
            return name == "python"
        return self.backends_dir is not None and (self.backends_dir / name).is_dir()

    def stub_for(self, version: tuple[int, int] | None = None) -> Path | None:
        """The Python backend stub for ``version`` (default: the running interpreter)."""
        if self.stubs_dir is None:
            return None
        major, minor = version or sys.version_info[:2]
        p = self.stubs_dir / f"{major}.{minor}" / "triton_python_backend_stub"
        return p if p.is_file() else None


def find_tritonserver(explicit: str | os.PathLike[str] | None = None) -> TritonInstallation:
    """Locate tritonserver: ``explicit`` or ``$CLIPQ_TRITONSERVER``, then nvidia-pytriton, then ``PATH``.

    Raises:
        ServerError: none was found (the message says how to get one).
    """
    candidate = explicit or os.environ.get("CLIPQ_TRITONSERVER")
    if candidate:
        p = Path(candidate)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise ServerError(f"tritonserver not found or not executable: {p}")
        return _installation_for(p)
    spec = importlib.util.find_spec("pytriton")  # locate without importing (pytriton imports a lot)
    if spec is not None and spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
        binary = root / "tritonserver" / "bin" / "tritonserver"
        if binary.is_file():
            return _installation_for(binary, pytriton_root=root)
    found = shutil.which("tritonserver")
    if found:
        return _installation_for(Path(found))
    raise ServerError(
        "tritonserver not found: install the serving extra (pip install 'clipq[serve]', whose "
        "nvidia-pytriton wheel ships one), use the NGC container, or set CLIPQ_TRITONSERVER"
    )


def _installation_for(binary: Path, pytriton_root: Path | None = None) -> TritonInstallation:
    binary = binary.resolve()
    if pytriton_root is None and binary.parent.parent.name == "tritonserver" and binary.parent.parent.parent.name == "pytriton":
        pytriton_root = binary.parent.parent.parent
    if pytriton_root is not None:
        libs = [d for d in (pytriton_root.parent / "nvidia_pytriton.libs", pytriton_root / "tritonserver" / "external_libs")
                if d.is_dir()]
        return TritonInstallation(
            binary=binary, source="pytriton",
            python_backend=pytriton_root / "tritonserver" / "backends" / "python",
            stubs_dir=pytriton_root / "tritonserver" / "python_backend_stubs",
            lib_dirs=tuple(libs),
        )
    backends = binary.parent.parent / "backends"
    return TritonInstallation(binary=binary, source="system", backends_dir=backends if backends.is_dir() else None)


def find_libpython(version: tuple[int, int] | None = None) -> Path | None:
    """The shared ``libpython<M>.<m>.so.1.0`` the Python backend stub needs, or ``None``.

    Looks in the interpreter's own ``LIBDIR`` first (a pyenv or conda build with a shared
    library), then in the dynamic linker's cache, then in the usual system directories.
    """
    major, minor = version or sys.version_info[:2]
    name = f"libpython{major}.{minor}.so.1.0"
    dirs = [sysconfig.get_config_var("LIBDIR")]
    if (major, minor) == sys.version_info[:2]:
        dirs.append(os.path.join(sys.base_prefix, "lib"))
    for d in dirs:
        if d and (Path(d) / name).is_file():
            return Path(d) / name
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if name in line and "=>" in line:
                p = Path(line.split("=>", 1)[1].strip())
                if p.is_file():
                    return p
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"):
        if (Path(d) / name).is_file():
            return Path(d) / name
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _python_version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def server_environment(inst: TritonInstallation) -> dict[str, str]:
    """The environment the server and its Python stubs need (``PATH``, ``LD_LIBRARY_PATH``).

    Raises:
        ServerError: a pytriton build without a stub for this Python, or no shared libpython.
    """
    env = dict(os.environ)
    # the stub's embedded interpreter finds this environment's site-packages through PATH
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    lib_dirs = [str(d) for d in inst.lib_dirs]
    if inst.source == "pytriton":
        if inst.stub_for() is None or inst.python_backend is None:
            raise ServerError(f"{inst.binary}: no Python backend stub for Python {_python_version()} in {inst.stubs_dir}")
        libpython = find_libpython()
        if libpython is None:
            raise ServerError(
                f"libpython{_python_version()}.so.1.0 not found: the Python backend stub embeds it. Install it "
                f"(Debian/Ubuntu: apt-get install libpython{_python_version()}; `make libpython` does this)")
        lib_dirs.insert(0, str(libpython.parent))
    if lib_dirs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*lib_dirs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    return env


def prepare_backends(inst: TritonInstallation, clipq_backend: Path, into: Path) -> Path:
    """Write the backend directory one server run uses and return it.

    It holds the Python backend (pytriton: its library and the stub for this Python, copied; a
    system installation: every backend it has, linked) and ``clipq/model.py``, copied from
    ``clipq_backend`` (the repository's own copy of the ``clipq`` Python-based backend).

    Raises:
        ServerError: the Python backend stub or the clipq backend's model.py is missing.
    """
    source = clipq_backend / "model.py"
    if not source.is_file():
        raise ServerError(f"the clipq Python-based backend is missing: no {source}")
    backends = into / "backends"
    backends.mkdir(parents=True)
    if inst.source == "pytriton":
        stub = inst.stub_for()
        if stub is None or inst.python_backend is None:
            raise ServerError(f"{inst.binary}: no Python backend stub for Python {_python_version()} in {inst.stubs_dir}")
        py = backends / "python"
        py.mkdir()
        for f in inst.python_backend.iterdir():
            if f.is_file():
                shutil.copy2(f, py / f.name)
        # linked, not copied: a copy is open for writing for a moment, and a process forked then by
        # any thread of this program holds that descriptor; tritonserver's exec of the stub then
        # fails with "Text file busy" (seen once in the test suite). The installed file is never written.
        (py / "triton_python_backend_stub").symlink_to(stub.resolve())
    elif inst.backends_dir is not None:
        for d in inst.backends_dir.iterdir():
            if d.is_dir() and d.name != BACKEND_NAME:
                (backends / d.name).symlink_to(d.resolve(), target_is_directory=True)
    (backends / BACKEND_NAME).mkdir()
    shutil.copy2(source, backends / BACKEND_NAME / "model.py")
    return backends
