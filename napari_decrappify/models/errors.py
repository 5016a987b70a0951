"""The one error every model-file problem raises: :class:`ModelFileError`."""

from __future__ import annotations


class ModelFileError(ValueError):
    """A model folder that is missing, corrupt, of an unknown version, or inconsistent."""
