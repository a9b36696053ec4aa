"""Start, watch and stop one tritonserver process serving a model repository.

Finding the binary, its Python backend, libpython and the backend directory is
:mod:`clipq.serving.launcher`'s job; this module runs the process. The server runs in its own
session and process group, on loopback unless told otherwise, with a private prefix for the Python
backend's shared-memory regions (several servers can run side by side). :meth:`TritonServer.stop`
sends SIGTERM, waits, kills the process group if it must, and checks that no stub process and no
shared-memory region is left behind.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipq.runtime.backends.triton_protocol import API_KEY_HEADER
from clipq.runtime.errors import ServerError

from .launcher import TritonInstallation, find_tritonserver, free_port, prepare_backends, server_environment
from .layout import RepositoryLayout, repository_layout

#: Messages tritonserver prints on every machine without a usable CUDA driver. They are harmless
#: here (CPU models, no pinned memory needed) and alarming to read, so users do not see them.
HARMLESS_PATTERNS = (
    re.compile(r"Unable to allocate pinned system memory"),
    re.compile(r"failed to allocate pinned system memory: no pinned memory pool"),
    re.compile(r"CUDA memory pool disabled"),
    re.compile(r"CudaDriverHelper has not been initialized"),
    re.compile(r"Failed to (?:initialize|init) CUDA driver"),
    re.compile(r"Unable to get number of CUDA devices|cudaGetDeviceCount|CUDA driver version is insufficient"),
    re.compile(r"GPU metrics|DCGM"),
)

_FAILED_LOAD = re.compile(r"failed to load '(?P<model>[^']+)' version (?P<version>\d+): (?P<reason>.*?)\"?$")
_TABLE_ROW = re.compile(r"^\|\s*(?P<model>[\w.-]+)\s*\|\s*(?P<version>\d+)\s*\|\s*UNAVAILABLE: (?P<reason>.*?)\s*\|?$")
_LOG_PREFIX = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+:\d+\] ")


def is_harmless(line: str) -> bool:
    """Whether ``line`` is one of the known harmless CUDA messages of a CPU-only machine."""
    return any(p.search(line) for p in HARMLESS_PATTERNS)


try:  # resolved here, in the parent: the child must not load libraries between fork and exec
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not glibc
    _PRCTL = None


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the server if the thread that started it dies (even by SIGKILL)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the Python backend stubs of a server), from /proc."""
    kids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the ppid follows the last ')'
        fields_after = stat.rsplit(")", 1)[1].split()
        if len(fields_after) > 1 and int(fields_after[1]) == pid:
            kids.append(int(d.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0); it is gone for every practical purpose
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


#: Triton's protocol groups a key restricts: all but health, which load balancers and the start-up
#: probe use (liveness and readiness say nothing about the models or data)
RESTRICTED = ("inference", "metadata", "model-config", "model-repository", "statistics", "shared-memory",
              "trace", "logging")


@dataclass
class ServerOptions:
    """Knobs of one tritonserver run (see :class:`TritonServer`).

    Attributes:
        host: Address to bind HTTP, gRPC and metrics to (loopback by default: nothing is exposed
            unless asked for).
        http_port, grpc_port, metrics_port: Ports; ``None`` picks a free one, ``0`` disables that
            endpoint (metrics) where the server allows it.
        startup_timeout_s: How long to wait for every model to be ready.
        exit_timeout_s: How long the server may drain in-flight requests on stop.
        log_verbose: tritonserver ``--log-verbose`` level.
        shm_default_bytes: Initial shared memory of each Python-backend instance. Sized to hold a
            batch of preprocessed images without growing: every growth is a resize and remap.
        shm_growth_bytes: Growth step of that region when a larger batch needs it.
        extra_args: More tritonserver arguments, appended last.
        api_key: Restrict :data:`RESTRICTED` (every protocol group but health) to calls carrying this
            key in the ``clipq-api-key`` header (Triton's ``--http-restricted-api`` and
            ``--grpc-restricted-protocol``); the runtime client sends it (``api_key=``,
            ``$CLIPQ_API_KEY``). Kept out of ``repr`` and of :attr:`TritonServer.log`.
        tls_cert, tls_key: PEM certificate and key: gRPC over TLS (``--grpc-use-ssl``; clients use
            ``grpcs://`` and verify against the CA, ``ca_file=``). Triton's HTTP endpoint has no
            TLS of its own: put a TLS-terminating proxy in front of it (docs/security.md).
        trace_file: Write Triton's own trace of every request (``--trace-config triton,file=``,
            level TIMESTAMPS, rate 1) to this JSON file: each trace carries the request id the
            client sent (``clipq app`` sends its ``X-Request-ID``). Written as the server runs
            and stops; None: no tracing.
        otel_endpoint: Export the same traces as OpenTelemetry spans over OTLP/HTTP to this URL
            (``http://collector:4318/v1/traces``; Triton's ``--trace-config mode=opentelemetry``),
            instead of ``trace_file``: Triton's own exporter, no Python dependency. None: off.
        die_with_parent: Have Linux stop the server when the thread that started it ends, even if
            that process is killed outright (no orphaned servers). Turn it off when starting the
            server from a short-lived thread.
    """

    host: str = "127.0.0.1"
    http_port: int | None = None
    grpc_port: int | None = None
    metrics_port: int | None = None
    startup_timeout_s: float = 120.0
    exit_timeout_s: float = 15.0
    log_verbose: int = 0
    shm_default_bytes: int = 8 << 20
    shm_growth_bytes: int = 16 << 20
    extra_args: Sequence[str] = field(default_factory=tuple)
    die_with_parent: bool = True
    api_key: str | None = field(default=None, repr=False)
    tls_cert: str | None = None
    tls_key: str | None = None
    trace_file: str | None = None
    otel_endpoint: str | None = None


class TritonServer:
    """One tritonserver process serving a model repository.

    Use as a context manager, or call :meth:`start` and :meth:`stop`::

        with TritonServer("triton_models") as server:
            print(server.grpc_url)

    Args:
        repository: A repository clipq rendered (its ``models/`` are served with its own
            ``backends/clipq``) or a plain Triton model repository (served with the installed
            package's ``clipq`` backend).
        options: :class:`ServerOptions` (loopback, free ports by default).
        installation: Which tritonserver (default: :func:`find_tritonserver`).
        on_line: Called with each line the server prints, except the known harmless CUDA
            messages (default: lines are kept in :attr:`log` only).

    Raises:
        ServerError: from :meth:`start`, when the server cannot be found, prepared or started,
            or a model fails to load (the message carries the server's own reason).
    """

    def __init__(
        self,
        repository: str | os.PathLike[str],
        options: ServerOptions | None = None,
        *,
        installation: TritonInstallation | None = None,
        on_line: Callable[[str], None] | None = None,
    ):
        self.repository = Path(repository).resolve()
        self.layout: RepositoryLayout = repository_layout(self.repository)
        self.options = options or ServerOptions()
        self.installation = installation
        self.on_line = on_line
        self.log: collections.deque[str] = collections.deque(maxlen=20_000)
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.startup_s = 0.0
        self._workdir: Path | None = None
        self._shm_prefix = f"clipq{os.getpid()}-{uuid.uuid4().hex[:8]}-"
        self._reader: threading.Thread | None = None
        self._stubs: set[int] = set()
        self._lock = threading.Lock()

    # -- endpoints ---------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{'grpcs' if self.options.tls_cert else 'grpc'}://{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics" if self.metrics_port else ""

    @property
    def _client_host(self) -> str:
        # a server bound to every interface is still reached on loopback from here
        return "127.0.0.1" if self.options.host in ("0.0.0.0", "") else self.options.host

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def version(self) -> str:
        for line in self.log:
            if "server_version" in line:
                return line.split("|")[2].strip() if line.count("|") >= 3 else ""
        return ""

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> TritonServer:
        """Start the server and wait until every model is ready.

        Returns:
            ``self``.

        Raises:
            ServerError: the binary, its Python backend or libpython are missing, the server exits
                or is not ready in time, or a model fails to load (with the server's reason).
        """
        if self.running():
            return self
        if not self.layout.models.is_dir():
            raise ServerError(f"model repository not found: {self.layout.models}")
        inst = self.installation or find_tritonserver()
        self.installation = inst
        self._workdir = Path(tempfile.mkdtemp(prefix="clipq-triton-"))
        try:
            env = server_environment(inst)
            backends = prepare_backends(inst, self.layout.backend, self._workdir)
            # auto-picked ports can be taken between picking and binding: try again with new ones
            attempts = 3 if None in (self.options.http_port, self.options.grpc_port) else 1
            for attempt in range(attempts):
                self._launch(inst, backends, env)
                try:
                    self._wait_ready()
                    break
                except ServerError:
                    in_use = any("address already in use" in line.lower() or "failed to listen" in line.lower()
                                 for line in self.log)
                    self._terminate()
                    if not in_use or attempt == attempts - 1:
                        raise
        except BaseException:
            self._terminate()
            self._cleanup()
            raise
        atexit.register(self.stop)
        return self

    def _command(self, inst: TritonInstallation, backends: Path) -> list[str]:
        o = self.options
        cmd = [
            str(inst.binary),
            f"--model-repository={self.layout.models}",
            f"--backend-directory={backends}",
            f"--http-address={o.host}", f"--http-port={self.http_port}",
            f"--grpc-address={o.host}", f"--grpc-port={self.grpc_port}",
            f"--log-verbose={o.log_verbose}",
            f"--exit-timeout-secs={int(o.exit_timeout_s)}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--model-control-mode=none",
            # configs are rendered complete; the backends must not second-guess them
            "--disable-auto-complete-config",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={o.shm_default_bytes}",
            f"--backend-config=python,shm-growth-byte-size={o.shm_growth_bytes}",
        ]
        if self.metrics_port:
            cmd += ["--allow-metrics=true", f"--metrics-address={o.host}", f"--metrics-port={self.metrics_port}",
                    "--allow-gpu-metrics=false"]
        else:
            cmd += ["--allow-metrics=false"]
        if o.api_key:
            if any(c.isspace() or c in ",:=" for c in o.api_key):
                raise ServerError("the API key must not contain whitespace, ',', ':' or '=' (tritonserver's "
                                  "restricted-API flags cannot carry them)")
            restrict = f"{','.join(RESTRICTED)}:{API_KEY_HEADER}={o.api_key}"
            cmd += [f"--http-restricted-api={restrict}", f"--grpc-restricted-protocol={restrict}"]
        if (o.tls_cert is None) != (o.tls_key is None):
            raise ServerError("tls_cert and tls_key go together: give both, or neither")
        if o.trace_file and o.otel_endpoint:
            raise ServerError("Triton traces to one place: give trace_file or otel_endpoint, not both")
        if o.otel_endpoint:
            cmd += ["--trace-config=mode=opentelemetry", f"--trace-config=opentelemetry,url={o.otel_endpoint}",
                    "--trace-config=level=TIMESTAMPS", "--trace-config=rate=1", "--trace-config=count=-1"]
        if o.trace_file:
            cmd += [f"--trace-config=triton,file={Path(o.trace_file).resolve()}", "--trace-config=level=TIMESTAMPS",
                    "--trace-config=rate=1", "--trace-config=count=-1"]
        if o.tls_cert:
            cmd += ["--grpc-use-ssl=true", f"--grpc-server-cert={Path(o.tls_cert).resolve()}",
                    f"--grpc-server-key={Path(o.tls_key).resolve()}"]
        return [*cmd, *o.extra_args]

    def _launch(self, inst: TritonInstallation, backends: Path, env: dict[str, str]) -> None:
        o = self.options
        self.http_port = o.http_port if o.http_port is not None else free_port(o.host or "127.0.0.1")
        self.grpc_port = o.grpc_port if o.grpc_port is not None else free_port(o.host or "127.0.0.1")
        self.metrics_port = o.metrics_port if o.metrics_port is not None else free_port(o.host or "127.0.0.1")
        self.log.clear()
        cmd = self._command(inst, backends)
        preexec = None
        if o.die_with_parent:
            setpriv = shutil.which("setpriv")
            if setpriv:  # util-linux sets the parent-death signal and execs: no Python code in the child
                cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
            else:
                preexec = _set_pdeathsig
        shown = " ".join(cmd)
        if o.api_key:
            shown = shown.replace(o.api_key, "***")
        self.log.append("$ " + shown)
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=self._workdir,
            # own session: a Ctrl-C in the terminal reaches clipq, which then stops the server in order
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509 - only a pre-resolved prctl call, and only without setpriv
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True, name="tritonserver-log")
        self._reader.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.log.append(line)
            if self.on_line is not None and not is_harmless(line):
                with contextlib.suppress(Exception):
                    self.on_line(line)

    def _ready(self) -> bool:
        url = f"{self.http_url}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:  # noqa: S310 - loopback URL we built
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait_ready(self) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.options.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                self._join_reader()
                raise ServerError(self._failure_message("tritonserver exited during start-up"))
            if self._ready():
                self.startup_s = time.monotonic() - t0
                self._stubs.update(_children(self.proc.pid))
                return
            time.sleep(0.1)
        raise ServerError(self._failure_message(
            f"tritonserver was not ready after {self.options.startup_timeout_s:.0f} s"))

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)

    def model_errors(self) -> dict[str, str]:
        """Model name -> the server's reason, for every model that failed to load (from its log)."""
        errors: dict[str, str] = {}
        for line in list(self.log):
            body = _LOG_PREFIX.sub("", line).strip().strip('"')
            m = _FAILED_LOAD.search(body) or _TABLE_ROW.match(line.strip())
            if m and m.group("model") not in errors:
                # the Python backend appends "\n\nAt:\n  <file>(<line>): initialize": keep the reason
                reason = m.group("reason").split("\\n\\nAt:")[0]
                errors[m.group("model")] = reason.strip().strip('"').replace("\\n", " ").strip()
        return errors

    def _failure_message(self, what: str) -> str:
        errors = self.model_errors()
        if errors:
            # a model that failed by itself first; ensembles that only lost a part after it
            primary = {k: v for k, v in errors.items() if "depends on" not in v and "no loaded version" not in v}
            shown = primary or errors
            lines = [f"{what}: {len(shown)} model(s) failed to load"]
            lines += [f"  {name}: {reason}" for name, reason in shown.items()]
            return "\n".join(lines)
        tail = [line for line in list(self.log)[-25:] if not is_harmless(line)]
        code = self.proc.poll() if self.proc else None
        status = f" (exit code {code})" if code is not None else ""
        return f"{what}{status}. Last lines of its log:\n  " + "\n  ".join(tail[-15:])

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the server: SIGTERM, wait for a clean exit, then SIGKILL what is left.

        Afterwards no server or stub process and none of this server's shared-memory regions
        remain. Safe to call twice.

        Args:
            timeout_s: How long to wait for a clean exit (default: the exit timeout + 5 s).
        """
        with self._lock:
            with contextlib.suppress(Exception):
                atexit.unregister(self.stop)
            self._terminate(timeout_s)
            self._cleanup()

    def _terminate(self, timeout_s: float | None = None) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            self._stubs.update(_children(proc.pid))
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s if timeout_s is not None else self.options.exit_timeout_s + 5)
            except subprocess.TimeoutExpired:
                # the server started its own process group: this reaches it and its stubs only
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._join_reader()
        # stubs exit when their parent goes; give them a moment, then make sure
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in self._stubs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in self._stubs:
            if _alive(p):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()

    def leftover_processes(self) -> list[int]:
        """Server or stub processes of this server still alive (empty after :meth:`stop`)."""
        pids = list(self._stubs) + ([self.proc.pid] if self.proc else [])
        return [p for p in pids if _alive(p)]

    def _cleanup(self) -> None:
        # regions of a server that was killed stay in /dev/shm; ours carry a private prefix
        shm = Path("/dev/shm")
        if shm.is_dir():
            for f in shm.glob(f"{self._shm_prefix}*"):
                with contextlib.suppress(OSError):
                    f.unlink()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


class StopSignals:
    """SIGINT/SIGTERM handling for a command that runs a server in the foreground.

    Install it before :meth:`TritonServer.start`: a signal during start-up raises
    ``KeyboardInterrupt`` there (the start is abandoned and cleaned up), a signal afterwards ends
    :meth:`wait`. Previous handlers are restored on exit.

    Example::

        with StopSignals() as stop:
            server.start()
            stop.started()
            signum = stop.wait(server)
    """

    def __init__(self, signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)):
        self.signals = tuple(signals)
        self.received: int | None = None
        self._event = threading.Event()
        self._raising = True
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, _frame: object) -> None:
        self.received = signum
        self._event.set()
        if self._raising:
            raise KeyboardInterrupt

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.signal(s, self._handler) for s in self.signals}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)

    def started(self) -> None:
        """From now on a signal ends :meth:`wait` instead of raising."""
        self._raising = False

    def wait(self, server: TritonServer) -> int | None:
        """Block until a signal arrives or the server exits by itself.

        Returns:
            The signal number received, or ``None`` if the server exited first.
        """
        self.started()
        while not self._event.wait(0.5):
            if not server.running():
                return None
        return self.received
