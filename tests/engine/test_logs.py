"""Warnings ignored for a span, beside other threads (hsi_engine.logs)."""

from __future__ import annotations

import threading
import warnings

import numpy as np

import _scale_fixtures as F

import hsi_engine
from hsi_engine.logs import warnings_ignored


def test_spans_that_end_out_of_order_leave_the_filters_as_they_were():
    """warnings.catch_warnings restores a snapshot of the whole filter list: two threads' spans ending out of
    order left one's 'ignore' in place for good."""
    before = list(warnings.filters)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    inside: list[int] = []

    def a():
        with warnings_ignored(UserWarning, "writing .* without georeferencing"):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with warnings_ignored(UserWarning, "writing .* without georeferencing"):
            b_in.set()
            a_out.wait(10)
            inside.append(sum(f[0] == "ignore" and f[2] is UserWarning for f in warnings.filters)
                          - sum(f[0] == "ignore" and f[2] is UserWarning for f in before))

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert inside == [1]  # still ignored for B once A's span ended, and one entry for both
    assert warnings.filters == before


def test_only_the_named_warning_is_ignored():
    with warnings_ignored(UserWarning, "writing .* without georeferencing"):
        with warnings.catch_warnings(record=True) as seen:
            warnings.warn("writing m.tif without georeferencing (no CRS)", UserWarning)
            warnings.warn("writing m\nx.tif without georeferencing (no CRS)", UserWarning)  # a newline in a path
            warnings.warn("the scene is on another scale", hsi_engine.UnnormalisedInputWarning)
    assert [type(w.message) for w in seen] == [hsi_engine.UnnormalisedInputWarning]


def test_maps_written_from_several_threads_leave_the_process_s_warning_filters_alone(tmp_path):
    """Four threads writing maps of a scene without a CRS (each ignoring its writer's repeat of the warning):
    the process was left ignoring every UserWarning, the UnnormalisedInputWarning of a later call included."""
    cube = F.ip_crop(16, 16)
    model = F.tiny_model(cube)
    scene = F.dataarray(cube, crs=None)
    before = list(warnings.filters)
    errors = []

    def run(i):
        try:
            hsi_engine.classify_to_file(scene, model, tmp_path / f"m{i}.tif", progress=False)
        except Exception as e:  # noqa: BLE001 - asserted below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and warnings.filters == before
    assert all(np.array_equal(F.read_classes(tmp_path / f"m{i}.tif"), F.read_classes(tmp_path / "m0.tif"))
               for i in range(4))


def test_classifying_a_file_leaves_distributed_and_its_logging_config_unimported(tmp_path):
    """A plain classify of a GeoTIFF imported dask.distributed (dask looks the scheduler name "synchronous" up
    through it), whose import reconfigures logging process-wide: a Tornado service's access log went silent
    (tornado at CRITICAL). Read with dask's synchronous scheduler function, nothing is imported."""
    import subprocess
    import sys

    script = f"""
import logging, sys, warnings
import numpy as np, rasterio
from rasterio.transform import from_origin
import hsi_engine
from hsi_engine.demo import SHIPPED_MODEL
warnings.simplefilter("ignore")
cube = np.random.default_rng(0).uniform(1000, 5000, (200, 16, 16)).astype("float32")  # (no dask compute here)
with rasterio.open({str(tmp_path / 's.tif')!r}, "w", driver="GTiff", height=16, width=16, count=cube.shape[0],
                   dtype=cube.dtype, crs="EPSG:32633", transform=from_origin(0, 16, 1, 1)) as f:
    f.write(cube)
level = logging.getLogger("tornado").level
hsi_engine.classify({str(tmp_path / 's.tif')!r}, hsi_engine.load_model(SHIPPED_MODEL), progress=False)
print("distributed" in sys.modules, logging.getLogger("tornado").level == level)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]
