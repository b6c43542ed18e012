"""The one exception type a user-caused problem raises: a message naming the file or setting, and the fix."""
from __future__ import annotations

from typing import Optional


class BevportError(Exception):
    """An error the user can fix. The CLI prints `message` (and `hint`) and exits non-zero, without a traceback."""

    def __init__(self, message: str, hint: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class RecipeError(BevportError):
    pass


class CheckpointError(BevportError):
    pass


class DatasetError(BevportError):
    """A dataset folder, frame or calibration file that cannot be read as the recipe expects."""


class QuantizeError(BevportError):
    """Calibration or quantization inputs that do not fit the recipe or each other."""


class GraphError(BevportError):
    """A graph file that is missing, unreadable, or whose ports differ from the recipe's deploy contract."""
