"""A script without ``if __name__ == "__main__":`` that asks for ``workers=``: each worker process imports the script
(as ``__mp_main__``) and its top-level classify_to_file ran again there, refused with a false "another run is
writing ... (pid <the parent>)" beside the parent's map. The worker's call is told the real cause now."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import _scale_fixtures as F

REPO = Path(__file__).resolve().parents[2]


def test_an_unguarded_script_with_workers_is_told_to_add_the_main_guard(tmp_path):
    scene = F.write_zarr(tmp_path / "s.zarr", F.ip_crop(16, 16))
    model = F.save_tiny_model(tmp_path / "m", F.ip_crop(16, 16))
    script = tmp_path / "noguard.py"
    script.write_text(textwrap.dedent(f"""\
        import os
        import hsi_engine
        print("top level in", os.getpid(), "as", __name__, flush=True)
        try:
            hsi_engine.classify_to_file({str(scene)!r}, {str(model)!r}, {str(tmp_path / "map.tif")!r}, workers=1,
                                        progress=False)
            print("WROTE in", os.getpid(), flush=True)
        except Exception as e:
            print("ERROR in", os.getpid(), type(e).__name__, e, flush=True)
        """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    out = done.stdout + done.stderr
    assert "as __mp_main__" in out, out  # (the worker did import the script: the case under test)
    assert "another run" not in out, out
    assert "ERROR in" in out and "ClusterUsageError" in out and 'if __name__ == "__main__":' in out, out
    assert "noguard.py's top-level code in a worker process" in out
    assert "WROTE in" in out and (tmp_path / "map.tif").exists()  # the parent's run is the user's: it finished
