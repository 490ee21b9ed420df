"""Exceptions raised by refimpl.

Every error about a model file names the file and what is wrong with it, so a
user can fix the file rather than read a traceback from inside NumPy.
"""

from __future__ import annotations


class RefimplError(Exception):
    """Base class of every error refimpl raises on purpose."""


class ModelFileError(RefimplError, ValueError):
    """A model file is missing, malformed, or disagrees with another file."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ModelNotFoundError(RefimplError, OSError):
    """Neither a local directory nor a usable Hub snapshot could be found."""


class UnsafePickleError(ModelFileError):
    """A pytorch_model.bin asked to run something a state dict never needs."""
