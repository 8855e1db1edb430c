"""The training CLI's own error."""
from __future__ import annotations

__all__ = ["TrainError"]


class TrainError(ValueError):
    """A problem with the run's arguments, data, checkpoint or progress (a diverged loss).

    The CLI reports it as one line naming what is wrong and exits non-zero.
    """
