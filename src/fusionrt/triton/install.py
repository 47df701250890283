"""Where a Triton server is: ``tritonserver`` on ``PATH`` (a Triton container) or the one inside the
``nvidia-pytriton`` wheel (docs/serving.md, "The server"), and which backends a repository asks for."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from fusionrt.errors import InputError, ServerError
from fusionrt.triton.pbtxt import read_config

# config.pbtxt ``platform`` -> what serves it (a model names either a backend or a platform).
PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "ensemble": "ensemble"}


@dataclass(frozen=True)
class ServerInstallation:
    """Where a ``tritonserver`` and its backends are.

    Attributes:
        tritonserver: the server binary.
        backends: backend name -> its folder (``python`` -> a folder with ``libtriton_python.so``).
        library_path: a folder to put on ``LD_LIBRARY_PATH`` (the wheel's bundled libraries), or None.
        backend_directory: the ``--backend-directory`` to pass, or None to keep the server's default.
        stub: the python backend stub to copy into an assembled backend directory, or None.
    """

    tritonserver: Path
    backends: dict
    library_path: Path | None = None
    backend_directory: Path | None = None
    stub: Path | None = None


def find_tritonserver(tritonserver: str | os.PathLike | None = None, backend_directory: str | os.PathLike | None = None) -> ServerInstallation:
    """Locate ``tritonserver``: the given path, else ``PATH``, else the nvidia-pytriton wheel.

    Args:
        tritonserver: an explicit server binary.
        backend_directory: its backend folder (default: ``/opt/tritonserver/backends`` for a server
            on ``PATH``, the wheel's for the wheel's).

    Raises:
        ServerError: no server found, or the wheel has no stub for this Python version.
    """
    explicit = tritonserver or shutil.which("tritonserver")
    if explicit:
        binary = Path(explicit)
        if not binary.is_file():
            raise ServerError(f"tritonserver binary not found: {binary}")
        root = Path(backend_directory) if backend_directory else Path("/opt/tritonserver/backends")
        backends = {p.name: p for p in sorted(root.iterdir()) if p.is_dir()} if root.is_dir() else {}
        return ServerInstallation(binary, backends, backend_directory=root)
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "no tritonserver found: none on PATH and nvidia-pytriton is not installed; "
            "pip install 'fusionrt[serve]' or run inside a Triton container"
        )
    package = Path(list(spec.submodule_search_locations)[0])
    server = package / "tritonserver"
    binary = server / "bin" / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not binary.is_file():
        raise ServerError(f"the nvidia-pytriton wheel has no server binary at {binary}; reinstall nvidia-pytriton")
    if not stub.is_file():
        raise ServerError(f"the nvidia-pytriton wheel has no python backend stub for Python {version} ({stub})")
    root = Path(backend_directory) if backend_directory else server / "backends"
    backends = {p.name: p for p in sorted(root.iterdir()) if p.is_dir()} if root.is_dir() else {}
    return ServerInstallation(binary, backends, library_path=package.parent / "nvidia_pytriton.libs", stub=stub)


def repository_backends(repository: str | os.PathLike) -> dict[str, str]:
    """Model name -> the backend its config.pbtxt asks for (``ensemble`` for ensembles).

    Raises:
        InputError: a config.pbtxt Triton cannot parse (its parse error; it was reported as a
            model needing the "unknown" backend).
    """
    out = {}
    for config in sorted(Path(repository).glob("*/config.pbtxt")):
        try:
            msg = read_config(config)
        except ValueError as exc:
            raise InputError(f"{exc}; rebuild the repository with `fusionrt triton build`") from None
        backend, platform = msg.get("backend"), msg.get("platform")
        out[config.parent.name] = backend or PLATFORM_BACKENDS.get(platform, "unknown")
    return out


@dataclass(frozen=True)
class LocalBackend:
    """The backend ``fusionrt triton build`` picks when ``--backend`` is not given.

    Attributes:
        backend: ``onnxruntime`` when the server ``fusionrt serve`` would start has it (or when no
            server is found here: a Triton container has it), else ``python``.
        server: that server's binary, or None when none is found here.
        server_backends: its backends (``[]`` when none is found).
        reason: one line saying why, for the command's output.
    """

    backend: str
    server: Path | None
    server_backends: tuple
    reason: str


def local_backend() -> LocalBackend:
    """What the server ``fusionrt serve`` would start (:func:`find_tritonserver`) supports: the
    onnxruntime backend if it has it, else the python one (the nvidia-pytriton wheel's server has
    only that); onnxruntime when there is no server here."""
    try:
        installation = find_tritonserver()
    except ServerError as exc:
        return LocalBackend("onnxruntime", None, (), f"no local Triton server ({exc}); onnxruntime, as a Triton container has it")
    backends = tuple(sorted(installation.backends))
    if "onnxruntime" in installation.backends:
        return LocalBackend("onnxruntime", installation.tritonserver, backends,
                            f"the local server {installation.tritonserver} has the onnxruntime backend")
    return LocalBackend("python", installation.tritonserver, backends,
                        f"the local server {installation.tritonserver} has only {', '.join(backends) or 'no'} backend(s), not onnxruntime")
