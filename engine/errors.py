"""The exceptions that stages raise and the job runtime (engine.runtime.jobs) handles.

They live here, not in engine.runtime.jobs, so that a stage never imports the job manager
(stages are called by it, not the other way round). engine.runtime.jobs re-exports them.
"""
from __future__ import annotations


class JobCancelled(Exception):
    """Raised inside a stage by ctx.check_cancel() once cancel was asked for."""


class NonFiniteError(RuntimeError):
    """A loss became NaN or infinite; the run fails with the step and the loss named."""


class MemoryEstimateError(RuntimeError):
    """A run whose memory estimate (engine.memory) exceeds the device's free memory: refused
    before its model loads; the message says what to change."""


class CheckpointError(RuntimeError):
    """A checkpoint that must not or cannot be loaded (an old pickle checkpoint, a file
    that is not what it claims to be); the run fails with this message, nothing is run."""


class TrackerError(RuntimeError):
    """An experiment tracker (TensorBoard, MLflow) that cannot be used when the run starts;
    the run fails with this message unless its settings say to warn and go on."""
