"""The library's error types: what a user did wrong, said in one line.

Every error the library raises because of its input derives from :class:`PentachoraError`; the CLI
turns these into a one-line message and exit code 2, and anything else into a traceback with a hint
to report it. Each subclass also derives from the built-in it refines (``ValueError``, ``OSError``,
``RuntimeError``) so existing ``except ValueError`` code keeps working.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "PentachoraError",
    "RunFolderError",
]


class PentachoraError(Exception):
    """Base class of every error caused by the user's input (flags, files, data, run folders)."""


class ConfigError(PentachoraError, ValueError):
    """A configuration value is unknown, of the wrong type, non-finite or out of range."""


class CheckpointError(PentachoraError, ValueError):
    """A checkpoint or tensor file is missing, corrupt, foreign or does not match the model."""


class DataError(PentachoraError, ValueError):
    """Input data (images, folders, tensors, text, feature files) cannot be used as given."""


class RunFolderError(PentachoraError, RuntimeError):
    """A run folder is in use, belongs to a different run, or would lose finished work."""
