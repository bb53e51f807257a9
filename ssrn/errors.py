"""Errors the engine's command line catches before anything heavy is imported (no torch here)."""


class CheckpointError(ValueError):
    """A model directory that is missing, not ours, or whose weights do not match its config."""
