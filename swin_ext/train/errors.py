"""The training CLI's own error."""
from __future__ import annotations

__all__ = ["TrainError", "TrainArgumentError"]


class TrainError(ValueError):
    """A problem with the run's arguments, data, checkpoint or progress (a diverged loss).

    The CLI reports it as one line naming what is wrong and exits non-zero.
    """


class TrainArgumentError(TrainError):
    """A command-line argument that cannot be used (found after parsing: the device, the model
    configuration, the output directory). The CLI prints it as one line and exits with status 2."""
