"""Errors the engine's command line catches before anything heavy is imported (no torch here)."""


def first_line(e: BaseException) -> str:
    """``Type: message`` of an exception, its message's first line only (h5py's and xarray's run on with advice
    that does not apply; a ``KeyError``'s without the quotes its str adds)."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return f"{type(e).__name__}: {(text.splitlines() or [''])[0][:300]}"


class HSIEngineError(Exception):
    """Base of the project's errors, the trainer's and the model's included: one ``except`` for a pipeline."""


class OptionError(HSIEngineError, ValueError):
    """An argument outside what the function accepts: names the argument, what was given and what is accepted."""


class OutputError(HSIEngineError, OSError):
    """The output (a class map, a model directory) exists (without overwrite) or cannot be written."""


class CheckpointError(HSIEngineError, ValueError):
    """A model directory that is missing, not ours, or whose weights do not match its config."""
