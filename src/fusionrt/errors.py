"""The one exception hierarchy of fusionrt.

Every error a user can cause derives from :class:`FusionrtError`; catching it catches them all.
:class:`FusionrtInternalError` means a bug in fusionrt itself, never bad input.
"""

from __future__ import annotations


class FusionrtError(Exception):
    """Base class of every error fusionrt raises on purpose."""


class InputError(FusionrtError, ValueError):
    """A text, image or tensor given to fusionrt is not usable (it names the item and why).

    Attributes:
        item: ``("texts" | "images", index)`` when the error is about one item of a call (its
            index in that call), else ``None``.
        index: the item's index, or ``None``.
    """

    def __init__(self, message: str, *, item: tuple[str, int] | None = None, rest: str | None = None):
        super().__init__(message)
        self.item = item
        self._rest = rest

    @classmethod
    def of_item(cls, kind: str, index: int, rest: str) -> "InputError":
        """``kind[index]`` followed by ``rest``: ``of_item("images", 3, ": not an image")`` reads
        ``images[3]: not an image``."""
        return cls(f"{kind}[{index}]{rest}", item=(kind, index), rest=rest)

    @property
    def index(self) -> int | None:
        return None if self.item is None else self.item[1]

    def without_index(self) -> "InputError":
        """The same error for a caller who sent that one item alone: ``image: not an image``."""
        if self.item is None or self._rest is None:
            return self
        return InputError(f"{self.item[0][:-1]}{self._rest}")


class BundleError(FusionrtError):
    """A bundle directory is missing, corrupt, or of an unknown format (it names the file)."""


class CheckpointError(FusionrtError):
    """A checkpoint directory is missing files, or its weights do not match its config."""


class ExportError(FusionrtError):
    """Export of a checkpoint to ONNX failed."""


class ExportValidationError(ExportError):
    """The exported graphs do not answer like the PyTorch model within the stated tolerance.

    Attributes:
        failures: one line per failed check (output name, case, max difference, tolerance).
    """

    def __init__(self, message: str, failures: list[str] | None = None):
        self.failures = list(failures or [])
        if self.failures:
            message = message + "\n" + "\n".join(f"  - {f}" for f in self.failures)
        super().__init__(message)


class ProviderError(FusionrtError):
    """An ONNX Runtime execution provider was asked for and could not be used."""


class EngineClosedError(FusionrtError):
    """The :class:`~fusionrt.Engine` or :class:`~fusionrt.BatchingEngine` was closed before the request ran."""


class ServerError(FusionrtError):
    """The Triton server could not be found, refused the repository, did not become ready, or did
    not answer (the message carries the end of the server log when there is one)."""


class PeerUnavailableError(FusionrtError):
    """A benchmark peer cannot be built here: its package is not installed, the CPU lacks the
    precision it runs in, or the checkpoint lacks the data it needs (the message says which and
    how to fix)."""


class FusionrtInternalError(Exception):
    """A bug in fusionrt: please report it. Deliberately not a FusionrtError."""


class StoppedBySignal(BaseException):
    """SIGTERM or SIGHUP received by the ``fusionrt`` command (``kill``, a closed terminal, a CI
    job's timeout), raised so that the command's cleanups run as on Ctrl-C. Like
    ``KeyboardInterrupt``, not an ``Exception``: ``except Exception`` does not swallow it.

    Attributes:
        signum: the signal's number.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
