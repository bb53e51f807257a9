"""A Ctrl-C (or a service's timeout from a signal handler) that lands while the zarr path imports zarr, its codecs
and fsspec for the first time left zarr half-imported: every later zarr or resumable run in that process failed
with "module 'zarr' has no attribute 'core'". Those imports run whole now, as torch's first import does."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import importlib.abc, os, signal, sys, warnings
    import numpy as np, xarray as xr
    import hsi_engine
    from ssrn import SSRN, SSRNConfig
    warnings.simplefilter("ignore")
    MODULE, OUT = sys.argv[1], sys.argv[2]
    model = SSRN(SSRNConfig(bands=20, classes=4, patch=5)).eval()
    scene = xr.DataArray(np.random.default_rng(0).random((20, 12, 12), np.float32), dims=("band", "y", "x"))
    assert MODULE not in sys.modules, MODULE

    class CtrlCAt(importlib.abc.MetaPathFinder):
        fired = False
        def find_spec(self, name, path, target=None):
            if name == MODULE and not CtrlCAt.fired:
                CtrlCAt.fired = True
                os.kill(os.getpid(), signal.SIGINT)
            return None

    sys.meta_path.insert(0, CtrlCAt())
    try:
        hsi_engine.classify_to_file(scene, model, os.path.join(OUT, "a.zarr"), progress=False)
        print("not interrupted")
    except KeyboardInterrupt:
        print("interrupted", CtrlCAt.fired)
    hsi_engine.classify_to_file(scene, model, os.path.join(OUT, "b.zarr"), progress=False)
    hsi_engine.classify_to_file(scene, model, os.path.join(OUT, "c.tif"), progress=False, resume=True)
    print("both later runs written")
""")


@pytest.mark.parametrize("module", ["fsspec.compression", "numcodecs.blosc"])
def test_a_ctrl_c_during_the_zarr_path_s_first_imports_leaves_zarr_usable(tmp_path, module):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, module, str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["interrupted True", "both later runs written"], proc.stdout
    assert (tmp_path / "b.zarr").is_dir() and (tmp_path / "c.tif").is_file()
