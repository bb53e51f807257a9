"""The command line in pipelines: ``-q`` for a cron job whose successful run prints nothing (the only way out,
``2>/dev/null``, hid the errors too), and ``info`` output a script can read line by line."""

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


def test_info_of_a_path_with_a_newline_prints_one_line_for_it(tmp_path, capsys):
    """A file named ``a\\ncrs        EPSG:4326\\nb.tif`` made info's first ``crs`` line read EPSG:4326 (a script
    reading ``info`` took it as the scene's CRS)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    path = tmp_path / "a\ncrs        EPSG:4326\nb.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=8, dtype="uint16", crs="EPSG:32633",
                       transform=from_origin(0, 0, 1, 1)) as f:
        f.write(np.ones((8, 4, 4), np.uint16))
    assert main(["info", str(path)]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert lines["crs"].startswith("EPSG:32633") and lines["scene"].endswith("a\\ncrs        EPSG:4326\\nb.tif")
