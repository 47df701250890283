"""The one exception hierarchy of fusionrt.

Every error a user can cause derives from :class:`FusionrtError`; catching it catches them all.
:class:`FusionrtInternalError` means a bug in fusionrt itself, never bad input.
"""

from __future__ import annotations


class FusionrtError(Exception):
    """Base class of every error fusionrt raises on purpose."""


class InputError(FusionrtError, ValueError):
    """A text, image or tensor given to fusionrt is not usable (it names the item and why)."""


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
    """The :class:`~fusionrt.BatchingEngine` was closed before the request ran."""


class ServerError(FusionrtError):
    """The Triton server could not be found, refused the repository, did not become ready, or did
    not answer (the message carries the end of the server log when there is one)."""


class FusionrtInternalError(Exception):
    """A bug in fusionrt: please report it. Deliberately not a FusionrtError."""
