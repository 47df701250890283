"""Runtimes: what runs a bundle's graphs. One small interface (Polygraphy's runners), one module per
runtime behind it; the Engine's preprocessing, batching, errors and predictions do not change with it.

A runtime is a context manager: :meth:`Runtime.activate` loads what it needs (sessions, compiled
models), :meth:`Runtime.infer` runs every graph in order feeding each by tensor name,
:meth:`Runtime.deactivate` releases it. The public methods check the state and call ``*_impl``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping, Sequence

import numpy as np

from fusionrt.engine.loaders import Placement
from fusionrt.errors import FusionrtInternalError


class Runtime(ABC):
    """Base class of the runtimes.

    An abstract base class: subclasses implement ``activate_impl``, ``deactivate_impl``, ``infer_graph_impl`` and
    ``placements_impl``; ``infer`` chains the graphs through ``infer_graph_impl`` unless a subclass
    has a faster whole-bundle path (``infer_impl``).

    Attributes:
        name: the runtime's name, e.g. ``"onnxruntime"``.
        graphs: graph names in execution order.
        input_names / output_names: graph -> its tensor names.
    """

    name = "runtime"

    def __init__(self, graphs: Sequence[str]):
        self.graphs = tuple(graphs)
        self.input_names: dict[str, list[str]] = {}
        self.output_names: dict[str, list[str]] = {}
        self.is_active = False

    def activate(self) -> "Runtime":
        """Load the graphs. Raises FusionrtInternalError when already active."""
        if self.is_active:
            raise FusionrtInternalError(f"{self.name} runtime is already active")
        self.activate_impl()
        self.is_active = True
        return self

    def deactivate(self) -> None:
        """Release what :meth:`activate` loaded; a second call does nothing."""
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def infer(self, feed: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run every graph in order.

        Args:
            feed: bundle inputs by name (host arrays, already checked by the Engine).
            outputs: names to return; ``None`` returns every tensor (feed included).

        Returns:
            Host arrays by name, owned by the caller.
        """
        self._check_active()
        return self.infer_impl(feed, outputs)

    def infer_graph(self, graph: str, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph on the tensors it takes (for per-stage timing); returns its outputs."""
        self._check_active()
        return self.infer_graph_impl(graph, {k: feed[k] for k in self.input_names[graph]})

    @property
    def placements(self) -> dict[str, Placement]:
        """Graph -> where it runs (:class:`~fusionrt.engine.loaders.Placement`)."""
        self._check_active()
        return self.placements_impl()

    def __enter__(self) -> "Runtime":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def _check_active(self) -> None:
        if not self.is_active:
            raise FusionrtInternalError(f"{self.name} runtime used before activate() or after deactivate()")

    # --- for subclasses --------------------------------------------------------------------------
    @abstractmethod
    def activate_impl(self) -> None:
        """Load the graphs and set ``input_names`` / ``output_names``."""

    @abstractmethod
    def deactivate_impl(self) -> None:
        """Release what ``activate_impl`` loaded."""

    @abstractmethod
    def infer_graph_impl(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one graph on exactly its inputs; return its outputs by name (host arrays)."""

    @abstractmethod
    def placements_impl(self) -> dict[str, Placement]:
        """Graph -> where it runs."""

    def infer_impl(self, feed: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> dict[str, np.ndarray]:
        values = dict(feed)
        for graph in self.graphs:
            values.update(self.infer_graph_impl(graph, {k: values[k] for k in self.input_names[graph]}))
        return {k: values[k] for k in (outputs if outputs is not None else list(values))}


class MixedRuntime(Runtime):
    """Graphs on different runtimes, chained in order (a bundle whose text encoder runs on
    OpenVINO and whose head runs on ONNX Runtime, for example). Tensors cross between runtimes as
    host arrays.

    Args:
        parts: runtimes (inactive), each holding some of the graphs; ``graphs`` gives the order.
        graphs: every graph in execution order.
    """

    name = "mixed"

    def __init__(self, parts: Sequence[Runtime], graphs: Sequence[str]):
        super().__init__(graphs)
        self.parts = list(parts)
        self._owner: dict[str, Runtime] = {g: p for p in self.parts for g in p.graphs}
        if sorted(self._owner) != sorted(self.graphs):
            raise FusionrtInternalError(f"runtimes hold {sorted(self._owner)}, expected {sorted(self.graphs)}")

    def activate_impl(self) -> None:
        activated = []
        try:
            for part in self.parts:
                activated.append(part.activate())
        except BaseException:
            for part in activated:
                part.deactivate()
            raise
        for part in self.parts:
            self.input_names.update(part.input_names)
            self.output_names.update(part.output_names)

    def deactivate_impl(self) -> None:
        for part in self.parts:
            part.deactivate()

    def infer_graph_impl(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._owner[graph].infer_graph_impl(graph, feed)

    def placements_impl(self) -> dict[str, Placement]:
        out: dict[str, Placement] = {}
        for part in self.parts:
            out.update(part.placements_impl())
        return {g: out[g] for g in self.graphs}


def runtime_per_graph(paths: Mapping[str, object], kinds: Mapping[str, str], make) -> Runtime:
    """One runtime for graphs that all run on one kind, else a :class:`MixedRuntime`.

    Args:
        paths: graph -> file, in execution order.
        kinds: graph -> runtime kind (``onnxruntime``, ``openvino``).
        make: ``(kind, {graph: file}) -> Runtime`` (inactive).
    """
    groups: dict[str, dict] = {}
    for graph, path in paths.items():
        groups.setdefault(kinds[graph], {})[graph] = path
    if len(groups) == 1:
        kind, group = next(iter(groups.items()))
        return make(kind, group)
    return MixedRuntime([make(kind, group) for kind, group in groups.items()], list(paths))
