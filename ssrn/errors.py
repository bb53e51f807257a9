"""Errors the engine's command line catches before anything heavy is imported (no torch here)."""


class HSIEngineError(Exception):
    """Base of the project's errors, the trainer's and the model's included: one ``except`` for a pipeline."""


class OptionError(HSIEngineError, ValueError):
    """An argument outside what the function accepts: names the argument, what was given and what is accepted."""


class CheckpointError(HSIEngineError, ValueError):
    """A model directory that is missing, not ours, or whose weights do not match its config."""
