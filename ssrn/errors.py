"""Errors the engine's command line catches before anything heavy is imported (no torch here)."""


class HSIEngineError(Exception):
    """Base of the project's errors, the trainer's and the model's included: one ``except`` for a pipeline."""


class CheckpointError(HSIEngineError, ValueError):
    """A model directory that is missing, not ours, or whose weights do not match its config."""
