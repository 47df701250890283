"""Start and stop a Triton Inference Server on a model repository.

The server is ``tritonserver`` from ``PATH`` (a Triton container) or else the one inside the
``nvidia-pytriton`` wheel (docs/serving.md, "The server"): server 2.51 with the python
backend only. For the wheel's server a backend directory is assembled in a temporary folder
(``python/`` = the wheel's python backend plus the stub built for the running Python), and the
wheel's ``nvidia_pytriton.libs/`` goes on ``LD_LIBRARY_PATH``. The server runs in its own process
group (python backend stubs included) and is stopped as a group: SIGTERM, then SIGKILL after
``stop_timeout_s``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from fusionrt.errors import FusionrtInternalError, InputError, ServerError
from fusionrt.triton.install import ServerInstallation, find_tritonserver, repository_backends
from fusionrt.triton.repository import ENSEMBLE, unservable_path_reason

LOOPBACK = "127.0.0.1"
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's defaults
_ERROR_LINE = re.compile(r"^E\d{4} |^error:|Traceback|Error:")
# Logged by the wheel's server on machines without a GPU; harmless on CPU.
_HARMLESS = re.compile(r"CUDA|Cuda|NVML|DCGM|GPU")
# The APIs only requests carrying the admin key reach (HTTP --http-restricted-api, gRPC
# --grpc-restricted-protocol): shared-memory registration is the second step of the
# CVE-2025-23319/23320/23334 chain, logging turns on verbose logs of request contents, the
# repository index lists every model. Inference, health and metadata stay open.
RESTRICTED_APIS = ("shared-memory", "model-repository", "model-config", "logging", "trace", "statistics")
# The HTTP header that carries the admin key; Triton's gRPC endpoint expects it in the metadata key
# with its "triton-grpc-protocol-" prefix (and answers UNAVAILABLE "This protocol is restricted" without).
ADMIN_HEADER = "fusionrt-admin-key"
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
DEVELOPMENT_SERVER_WARNING = (
    "the Triton server of the nvidia-pytriton wheel (2.51) is a development server with known vulnerabilities "
    "(NVIDIA security bulletins since August 2025): it listens on 127.0.0.1 only; never expose it (no port "
    "forwarding, no proxy); serve users with an NGC Triton release from `fusionrt triton deploy`"
)


def restricted_api_flags(key: str) -> list[str]:
    """``tritonserver`` flags that put :data:`RESTRICTED_APIS` behind ``ADMIN_HEADER: key`` (HTTP and gRPC).

    ``key`` is the literal key, or a shell expansion such as ``$(cat FILE)`` in a deployment's command.
    """
    apis = ",".join(RESTRICTED_APIS)
    return [f"--http-restricted-api={apis}:{ADMIN_HEADER}={key}", f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={key}"]


def read_admin_key(path: str | os.PathLike) -> str:
    """The admin key in ``path`` (written by ``fusionrt serve``, or your deployment's Secret).

    Raises:
        InputError: the file is missing, unreadable or empty.
    """
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InputError(f"--admin-key-file {path}: cannot read it ({exc.strerror}); `fusionrt serve` prints the path of its key file") from None
    if not key:
        raise InputError(f"--admin-key-file {path} is empty; `fusionrt serve` writes a new key at every start")
    return key


def free_port() -> int:
    """A TCP port free on the loopback interface right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


class TritonServer:
    """A ``tritonserver`` process serving a repository on the loopback interface.

    Use it as a context manager; the server is stopped on exit, on Ctrl-C, on SIGTERM to this
    process (when started from the main thread) and at interpreter exit::

        with TritonServer("repo", http_port=None) as server:   # None: a free port
            client = Client(server.grpc_url)

    Args:
        repository: the model repository (``fusionrt triton build``).
        http_port, grpc_port, metrics_port: ports on 127.0.0.1; ``None`` picks a free one.
        model: the model whose readiness :meth:`start` waits for (the ensemble).
        startup_timeout_s: how long :meth:`start` waits for the server and ``model`` to be ready.
        stop_timeout_s: how long :meth:`stop` waits after SIGTERM before SIGKILL.
        log_path: file for the server's output (default: a temporary file, removed by :meth:`stop`).
        tritonserver: the server binary (default: ``PATH``, else the nvidia-pytriton wheel's).
        backend_directory: the server's backend folder (default: see :func:`find_tritonserver`).
        admin_key_file: where :meth:`start` writes the admin key (mode 0600, removed by :meth:`stop`);
            default: the server's temporary folder (mode 0700). Its path is :attr:`admin_key_file`.
            An existing file is replaced only if it holds a key of an earlier start.

    Attributes:
        admin_key: a random key (64 hex digits) made for this server: requests to
            :data:`RESTRICTED_APIS` must carry it in the ``fusionrt-admin-key`` header
            (:data:`ADMIN_HEADER`); :class:`~fusionrt.triton.Client` takes it as ``admin_key``.
    """

    def __init__(
        self,
        repository: str | os.PathLike,
        http_port: int | None = DEFAULT_PORTS["http"],
        grpc_port: int | None = DEFAULT_PORTS["grpc"],
        metrics_port: int | None = DEFAULT_PORTS["metrics"],
        model: str = ENSEMBLE,
        startup_timeout_s: float = 120.0,
        stop_timeout_s: float = 10.0,
        log_path: str | os.PathLike | None = None,
        tritonserver: str | os.PathLike | None = None,
        backend_directory: str | os.PathLike | None = None,
        admin_key_file: str | os.PathLike | None = None,
    ):
        self.repository = Path(repository).absolute()
        self.ports = {
            "http": http_port or free_port(),
            "grpc": grpc_port or free_port(),
            "metrics": metrics_port or free_port(),
        }
        if len(set(self.ports.values())) != 3:
            raise InputError(f"the http, grpc and metrics ports must differ, got {self.ports}")
        if startup_timeout_s <= 0 or stop_timeout_s <= 0:
            raise InputError("startup_timeout_s and stop_timeout_s must be > 0")
        self.model = model
        self.startup_timeout_s = float(startup_timeout_s)
        self.stop_timeout_s = float(stop_timeout_s)
        self.log_path = Path(log_path).absolute() if log_path else None
        self._tritonserver = tritonserver
        self._backend_directory = backend_directory
        self.shm_prefix = f"fusionrt_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.admin_key = secrets.token_hex(32)
        self.admin_key_file = Path(admin_key_file).absolute() if admin_key_file else None
        self._wrote_key_file = False
        self.process: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._previous_sigterm = None
        self._stopping = False
        self._lock = threading.Lock()

    # --- addresses -------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        """``127.0.0.1:PORT`` of the HTTP/REST endpoint (tritonclient's url form)."""
        return f"{LOOPBACK}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        """``127.0.0.1:PORT`` of the gRPC endpoint."""
        return f"{LOOPBACK}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['metrics']}/metrics"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    # --- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "TritonServer":
        """Launch the server and wait until it and :attr:`model` are ready.

        Raises:
            ServerError: no server binary; the repository needs the onnxruntime backend and this
                server lacks it; the server exited or was not ready within ``startup_timeout_s``
                (the message ends with the server log's last lines).
            InputError: the repository folder does not exist, or its path has whitespace or non-ASCII
                characters (:func:`~fusionrt.triton.repository.unservable_path_reason`).
        """
        if self.process is not None:
            raise ServerError("this TritonServer was already started; create a new one")
        if not self.repository.is_dir():
            raise InputError(f"model repository not found: {self.repository} (build one with `fusionrt triton build`)")
        if unservable_path_reason(self.repository):  # the server would wait startup_timeout_s for stubs that aborted
            raise InputError(f"{unservable_path_reason(self.repository)}: copy or move it to a path without them")
        taken = {kind: port for kind, port in self.ports.items() if not _port_free(port)}
        if taken:  # another server's health answered for this one, which then exited
            kind, port = next(iter(taken.items()))
            raise ServerError(f"{kind} port {port} on {LOOPBACK} is in use (another server?); stop it, or choose another "
                              f"--{kind}-port (None in Python: a free one)")
        installation = find_tritonserver(self._tritonserver, self._backend_directory)
        self._check_backends(installation)
        self._workdir = Path(tempfile.mkdtemp(prefix="fusionrt-triton-"))
        try:
            backend_directory = installation.backend_directory or self._assemble_backends(installation)
            if self.log_path is None:
                self.log_path = self._workdir / "tritonserver.log"
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._write_admin_key()
            command = [
                str(installation.tritonserver),
                f"--model-repository={self.repository}",
                f"--backend-directory={backend_directory}",
                f"--http-address={LOOPBACK}", f"--http-port={self.ports['http']}",
                f"--grpc-address={LOOPBACK}", f"--grpc-port={self.ports['grpc']}",
                f"--metrics-address={LOOPBACK}", f"--metrics-port={self.ports['metrics']}",
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
                f"--exit-timeout-secs={max(1, int(self.stop_timeout_s))}",
                "--exit-on-error=true",
                "--strict-readiness=true",
                *restricted_api_flags(self.admin_key),
            ]
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._environment(installation),
                    cwd=self._workdir,
                    start_new_session=True,  # own process group: stop() signals server and stubs together
                    preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
                )
        except BaseException:
            self._cleanup()
            raise
        self._install_handlers()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> int | None:
        """Stop the server and its python backend stubs: SIGTERM to the process group, SIGKILL
        after ``stop_timeout_s``. Idempotent.

        Returns:
            The server's exit code (None if it never started).
        """
        with self._lock, _sigint_ignored():  # a second Ctrl-C cut the wait and the cleanup short
            if self._stopping:  # done already: the group id may belong to someone else by now
                return self.process.returncode if self.process else None
            self._stopping = True  # also keeps a second SIGTERM from interrupting the cleanup
            code = None
            if self.process is not None:
                code = self.process.poll()
                if code is None:
                    _signal_group(self.process.pid, signal.SIGTERM)
                    try:
                        code = self.process.wait(self.stop_timeout_s)
                    except subprocess.TimeoutExpired:
                        _signal_group(self.process.pid, signal.SIGKILL)
                        code = self.process.wait()
                # Stubs outlive a killed server for a moment: take down what is left of the group
                # and wait until it is gone (SIGKILL is delivered asynchronously).
                _signal_group(self.process.pid, signal.SIGKILL)
                deadline = time.monotonic() + self.stop_timeout_s
                while _live_group_members(self.process.pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
            self._restore_handlers()
            self._cleanup()
            return code

    def wait(self) -> int:
        """Block until the server exits; returns its exit code."""
        if self.process is None:
            raise ServerError("the server was not started")
        return self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        """The server log's error lines (CUDA/NVML noise left out) and its last ``lines`` lines
        ('' when there is no log)."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            text = f.read().decode("utf-8", errors="replace").splitlines()
        errors = [line for line in text if _ERROR_LINE.match(line) and not _HARMLESS.search(line)]
        out = "\n".join(text[-lines:])
        return ("errors:\n" + "\n".join(errors[-10:]) + "\nlast lines:\n" + out) if errors else out

    # --- internals -------------------------------------------------------------------------------
    def _check_backends(self, installation: ServerInstallation) -> None:
        wanted = repository_backends(self.repository)
        if not wanted:
            raise InputError(f"{self.repository} holds no model (no */config.pbtxt); build one with `fusionrt triton build`")
        if self.model not in wanted:
            raise InputError(f"{self.repository} has no model {self.model!r} (models: {sorted(wanted)})")
        for backend in sorted(set(wanted.values()) - {"ensemble"}):
            if backend not in installation.backends:
                models = sorted(m for m, b in wanted.items() if b == backend)
                hint = "; rebuild with --backend python" if backend == "onnxruntime" else ""
                raise ServerError(
                    f"models {models} need the {backend} backend: no {backend} backend here "
                    f"({installation.tritonserver} has {sorted(installation.backends) or 'none'}){hint}"
                )

    def _assemble_backends(self, installation: ServerInstallation) -> Path:
        """``backends/python/`` = the wheel's python backend + the stub for this Python."""
        if self._workdir is None:
            raise FusionrtInternalError("_assemble_backends called before start() made the work directory")
        python = self._workdir / "backends" / "python"
        shutil.copytree(installation.backends["python"], python, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(installation.stub, python / "triton_python_backend_stub")
        return python.parent

    def _write_admin_key(self) -> None:
        """The key to :attr:`admin_key_file` (default: in the 0700 work folder), readable by its owner only."""
        if self._workdir is None:
            raise FusionrtInternalError("_write_admin_key called before start() made the work directory")
        if self.admin_key_file is None:
            self.admin_key_file = self._workdir / "admin-key"
        if self.admin_key_file.exists() and not _is_key_file(self.admin_key_file):
            raise InputError(f"--admin-key-file {self.admin_key_file} exists and does not hold a fusionrt admin key "
                             "(64 hex digits): it is not replaced; give a new path")
        self.admin_key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.admin_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)  # a file that existed keeps its mode through O_CREAT
            f.write(self.admin_key + "\n")
        self._wrote_key_file = True

    def _environment(self, installation: ServerInstallation) -> dict:
        """This process's environment, plus what the python backend stub needs to run this
        interpreter's packages (fusionrt, numpy, onnxruntime, tokenizers)."""
        env = dict(os.environ)
        if installation.library_path is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (env.get("LD_LIBRARY_PATH"), str(installation.library_path)) if p)
        # The stub's embedded interpreter finds its prefix through `python3` on PATH, as in an
        # activated virtual environment.
        env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH")) if p)
        if sys.prefix != sys.base_prefix:
            env["VIRTUAL_ENV"] = sys.prefix
        fusionrt_root = str(Path(__file__).resolve().parents[2])  # the folder holding fusionrt/
        paths = [fusionrt_root, *site.getsitepackages(), env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
        return env

    def _wait_ready(self) -> None:
        if self.process is None:
            raise FusionrtInternalError("_wait_ready called before the server process was started")
        deadline = time.monotonic() + self.startup_timeout_s
        base = f"http://{self.http_url}/v2"
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerError(
                    f"tritonserver exited with code {code} while starting; end of its log ({self.log_path}):\n{self.log_tail()}"
                )
            if _http_ok(f"{base}/health/ready") and _http_ok(f"{base}/models/{self.model}/ready"):
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"tritonserver was not ready with model {self.model!r} after {self.startup_timeout_s:.0f} s "
                    f"(raise startup_timeout_s if models are slow to load); end of its log ({self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def _install_handlers(self) -> None:
        atexit.register(self.stop)
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            self._previous_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        """SIGTERM to this process: unwind like Ctrl-C, so ``with``/``finally`` blocks stop the server."""
        if not self._stopping:
            raise SystemExit(128 + signum)

    def _restore_handlers(self) -> None:
        atexit.unregister(self.stop)
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _cleanup(self) -> None:
        # Regions of a killed python backend stay in /dev/shm; the prefix is this server's own.
        with contextlib.suppress(OSError):
            for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
                region.unlink(missing_ok=True)
        if self._wrote_key_file and self.admin_key_file is not None:  # the key is this server's only
            with contextlib.suppress(OSError):
                self.admin_key_file.unlink(missing_ok=True)
            self._wrote_key_file = False
        if self._workdir is not None:
            if self.log_path is not None and self.log_path.is_relative_to(self._workdir):
                self.log_path = None
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def serve(
    repository: str | os.PathLike,
    http_port: int | None = DEFAULT_PORTS["http"],
    grpc_port: int | None = DEFAULT_PORTS["grpc"],
    metrics_port: int | None = DEFAULT_PORTS["metrics"],
    startup_timeout_s: float = 120.0,
    log_path: str | os.PathLike | None = None,
    on_ready=None,
    admin_key_file: str | os.PathLike | None = None,
) -> int:
    """Serve a repository until Ctrl-C or SIGTERM, then stop the server cleanly.

    Args:
        repository: the model repository.
        http_port, grpc_port, metrics_port: ports on 127.0.0.1 (``None``: a free one).
        startup_timeout_s: how long to wait for readiness.
        log_path: where the server log goes (default: a temporary file).
        on_ready: called with the :class:`TritonServer` once it is ready (the CLI prints the URLs
            and the admin key's file).
        admin_key_file: where the admin key goes (see :class:`TritonServer`).

    Returns:
        0 after Ctrl-C or SIGTERM.

    Raises:
        ServerError: the server did not start, or exited by itself (with the end of its log).
    """
    server = TritonServer(
        repository, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
        startup_timeout_s=startup_timeout_s, log_path=log_path, admin_key_file=admin_key_file,
    )
    with server:
        try:
            if on_ready is not None:
                on_ready(server)
            code = server.wait()
        except (KeyboardInterrupt, SystemExit):
            return 0
        raise ServerError(f"tritonserver exited by itself with code {code}; end of its log:\n{server.log_tail()}")


def _port_free(port: int) -> bool:
    """Whether nothing listens on ``port`` of the loopback interface (a port in TIME_WAIT is free,
    as it is to tritonserver)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _sigint_ignored():
    """Ignore SIGINT (Ctrl-C) inside the block when in the main thread (signal handlers are the
    main thread's); elsewhere, nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _is_key_file(path: Path) -> bool:
    """``path`` holds an admin key of an earlier start (64 hex digits), which may be replaced."""
    try:
        return re.fullmatch(r"[0-9a-f]{64}", path.read_text(encoding="utf-8").strip()) is not None
    except (OSError, UnicodeDecodeError):
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies (Linux /proc; [] elsewhere)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def _load_prctl():
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None).prctl
    return None


_PRCTL = _load_prctl()  # resolved here: the child between fork and exec should do as little as possible
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the thread that started it dies (Linux
    PR_SET_PDEATHSIG), so a killed caller does not leave a server behind. Only used when starting
    from the main thread, whose death is the process's."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
