"""``python -m hsi_engine``: the ``hsi-engine`` command, for environments whose scripts directory is not on PATH."""

from hsi_engine.cli import run

if __name__ == "__main__":
    run()
