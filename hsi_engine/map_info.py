"""``hsi-engine info MAP``: a class map (or the partial store of an interrupted run) that hsi-engine wrote, described
by what it records of what made it: software, model digest, precisions, map version, scene and tiles."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["class_map_attrs", "map_info"]


_NO_GEOTRANSFORM = "Dataset has no geotransform"  # rasterio's warning on a map without georeferencing (the demo's)


def class_map_attrs(path: str | os.PathLike) -> dict[str, Any] | None:
    """The metadata of a class map hsi-engine wrote (a GeoTIFF's tags, a zarr store's root attributes, partial
    stores included), or None for anything else."""
    from .outputs import TIFF_SUFFIXES, is_hsi_zarr, zarr_root_attributes

    p = Path(path)
    if p.is_dir():
        return dict(zarr_root_attributes(p)) if is_hsi_zarr(p) else None
    if p.suffix.lower() not in TIFF_SUFFIXES or not p.is_file():
        return None
    try:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        from .geotiff import gdal_name
        from .logs import warnings_ignored

        with warnings_ignored(NotGeoreferencedWarning, _NO_GEOTRANSFORM), \
                rasterio.open(gdal_name(p), driver="GTiff") as f:  # (under -W error: raised, and taken for a scene)
            tags = dict(f.tags())
    except Exception:  # noqa: BLE001 - not a raster rasterio reads: a scene's reader says why
        return None
    return tags if "model_digest" in tags and "n_classes" in tags else None


def map_info(path: str | os.PathLike) -> str:
    """A human summary of a class map hsi-engine wrote: format, shape, classes, CRS and what made it (software,
    model digest - compare ``hsi-engine info MODEL_DIR`` -, precisions, map version, the scene it was made of,
    a resumable run's runs); for a partial store, how many tiles are done."""
    import xarray as xr

    from .resume import FINGERPRINT_ATTR, json_attr, read_record

    p = Path(path)
    attrs = class_map_attrs(p)
    if attrs is None:
        raise ValueError(f"{p} is not a class map hsi-engine wrote")
    partial = p.is_dir() and str(attrs.get("partial", "0")) == "1"
    state = "an interrupted run"
    if partial:  # (a run still writing it holds its output's lock: "interrupted" sent users to --resume it)
        from ssrn.lock import held_by

        holder = held_by(p.with_name(p.name.removesuffix(".partial")))
        if holder is not None:
            state = f"a run in progress ({holder})"
    lines = [f"class map  {p}",
             "format     " + (f"zarr, the partial store of {state}" if partial else
                              "zarr" if p.is_dir() else "GeoTIFF")]
    if p.is_dir():
        with xr.open_zarr(p, consolidated=False) as ds:
            h, w = int(ds.sizes["y"]), int(ds.sizes["x"])
            crs = ds["spatial_ref"].attrs.get("crs_wkt") if "spatial_ref" in ds.coords else None
            extra = [n for n in ("probabilities", "confidence") if n in ds]
            if "classes" in ds and "class_names" not in attrs:  # (a zarr map's names sit on its classes array)
                attrs["class_names"] = ds["classes"].attrs.get("class_names")
    else:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        from .logs import warnings_ignored

        with warnings_ignored(NotGeoreferencedWarning, _NO_GEOTRANSFORM), \
                rasterio.open(p, driver="GTiff") as f:  # (its "crs none" says so)
            h, w, crs = f.height, f.width, (f.crs.to_string() if f.crs else None)
        from .outputs import side_paths

        extra = [k for k in ("probabilities", "confidence") if side_paths(p)[k].exists()]
    lines.append(f"shape      y={h} x={w}" + (f"; with {' and '.join(extra)}" if extra else ""))
    names = json_attr(attrs, "class_names") or []
    lines.append(f"classes    {attrs.get('n_classes', len(names))}" + (
        f": {', '.join(map(str, names[:6]))}" + (", ..." if len(names) > 6 else "") if names else ""))
    if crs is not None:
        from pyproj import CRS

        crs = CRS.from_user_input(crs).to_string()
    lines.append(f"crs        {crs or 'none'}")
    for key, label in (("software", "software"), ("model_digest", "model"), ("precision", "precision"),
                       ("spatial_precision", "spatial"), ("map_version", "map")):
        value = attrs.get(key)
        if value is not None:
            text = {"model_digest": f"digest {value} (hsi-engine info MODEL_DIR prints a model's)",
                    "map_version": f"version {value}", "spatial_precision": f"stage in {value}"}.get(key, value)
            lines.append(f"{label:<10} {text}")
    fingerprint = json_attr(attrs, FINGERPRINT_ATTR)
    if isinstance(fingerprint, dict):
        scene = fingerprint.get("scene") or {}
        what = scene.get("source") or (f"an in-memory scene (values digest {scene['digest'][:16]}...)"
                                       if scene.get("digest") else "an in-memory scene")
        nodata = fingerprint.get("nodata")  # (repr of the float it masked, or None)
        lines.append(f"scene      {what}; tile {fingerprint.get('tile')}" + (f"; nodata {nodata}" if nodata else ""))
    elif attrs.get("scene"):  # a run in one go records its scene and the nodata it masked
        nodata = attrs.get("scene_nodata")
        lines.append(f"scene      {attrs['scene']}" + (f"; nodata {nodata}" if nodata not in (None, "none") else ""))
    runs = json_attr(attrs, "resume_runs")
    if isinstance(runs, list) and runs:
        lines.append(f"runs       {len(runs)}; the last started {runs[-1].get('started', '?')}")
    if p.is_dir():
        try:
            record = read_record(p)
            lines.append(f"tiles      {int((record > 0).sum())} of {record.size} done")
        except Exception:  # noqa: BLE001 - a store without a tile record (written in one go)
            pass
    return "\n".join(lines)
