"""The ``.hsi`` xarray accessor, registered with ``import hsi_engine`` (as is rioxarray's ``.rio``, which the
engine's messages tell users to call); it loads the engine on first use."""

from __future__ import annotations

from typing import Any

import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr


@xr.register_dataarray_accessor("hsi")
@xr.register_dataset_accessor("hsi")
class HSIAccessor:
    """``scene.hsi.classify(model, **kw)``: forwards to :func:`hsi_engine.classify`; keeps no state. On a
    Dataset, the cube is its one 3-D variable (or the one named ``cube``, ``reflectance``, ...), as
    :func:`classify` picks it."""

    def __init__(self, da: xr.DataArray | xr.Dataset) -> None:
        self._da = da

    def classify(self, model: Any, **kwargs: Any) -> xr.DataArray | xr.Dataset:
        """Classify this scene with ``model``: ``hsi_engine.classify(scene, model, **kwargs)``, whose keywords
        (``tile``, ``device``, ``backend``, ``precision``, ``probabilities``, ``nodata``, ...) it takes."""
        from .api import classify

        return classify(self._da, model, **kwargs)
