"""Triton serving: the model-repository generator, a server launcher and a client.

:func:`build_repository` needs only the bundle (no Triton package); :class:`TritonServer` and
:func:`serve` need a ``tritonserver`` (on PATH or from the nvidia-pytriton wheel); :class:`Client`
needs ``tritonclient`` (``fusionrt[serve]``). Nothing here imports torch or transformers, and
names resolve lazily so that ``fusionrt.triton.cli`` (imported by the ``fusionrt`` command) stays
light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_LAZY = {
    "Client": "fusionrt.triton.client",
    "DeployOptions": "fusionrt.triton.deploy",
    "write_deployment": "fusionrt.triton.deploy",
    "RepositoryOptions": "fusionrt.triton.repository",
    "build_repository": "fusionrt.triton.repository",
    "ServerError": "fusionrt.errors",
    "TritonServer": "fusionrt.triton.server",
    "find_tritonserver": "fusionrt.triton.install",
    "serve": "fusionrt.triton.server",
    "read_admin_key": "fusionrt.triton.server",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover  (``X as X``: re-exported names, PEP 484)
    from fusionrt.errors import ServerError as ServerError
    from fusionrt.triton.client import Client as Client
    from fusionrt.triton.deploy import DeployOptions as DeployOptions, write_deployment as write_deployment
    from fusionrt.triton.install import find_tritonserver as find_tritonserver
    from fusionrt.triton.repository import RepositoryOptions as RepositoryOptions, build_repository as build_repository
    from fusionrt.triton.server import TritonServer as TritonServer, read_admin_key as read_admin_key, serve as serve


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fusionrt.triton' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
