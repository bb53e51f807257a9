"""``-q``: a cron job's successful run prints nothing (every run printed its INFO lines to stderr, and the only way
out, ``2>/dev/null``, hid the errors too)."""

import logging

from hsi_engine.cli import main
from hsi_engine.demo import SHIPPED_SCENE


def _info_records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("hsi_engine") and r.levelno == logging.INFO]


def test_quiet_keeps_stdout_and_drops_the_info_lines(capsys, caplog):
    caplog.set_level(logging.DEBUG)  # (pytest's handler on the root logger: the CLI's levels decide what reaches it)
    assert main(["info", str(SHIPPED_SCENE)]) == 0
    out = capsys.readouterr().out
    assert _info_records(caplog) and out
    for args in (["-q", "info", str(SHIPPED_SCENE)], ["info", str(SHIPPED_SCENE), "-q"],
                 ["--quiet", "info", str(SHIPPED_SCENE)]):
        caplog.clear()
        assert main(args) == 0
        assert capsys.readouterr().out == out and not _info_records(caplog), args
    assert main(["-q", "info", str(SHIPPED_SCENE) + ".missing"]) == 2  # errors still said
    assert "hsi-engine info: error: " in capsys.readouterr().err
