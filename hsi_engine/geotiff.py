"""GeoTIFF (and ENVI's data, through GDAL) read with rioxarray: nodata values and GDAL masks as NaN, band
scales kept, wavelengths and bad-band flags from band metadata, side files checked."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (registers ``.rio`` on the DataArrays read here)
import xarray as xr

from .cube import aligned_chunk, band_runs, finish_scene, holds_value, nan_capable, nodata_attr
from .errors import SceneError, user_stacklevel
from .logs import dropped, warnings_ignored
from .wavelengths import wavelengths_in_names, wavelengths_nm

log = logging.getLogger(__name__)


# rasterio's log line for each metadata item that is not UTF-8 text (it skips the item), once per item and read: a
# Latin-1 ENVI header (Windows tools write 'wavelength units = µm', band names with 'grün') gave ~180 of them
_UNDECODED = "Failed to decode metadata item"
# the encoding key of a scene whose opening warned that it has a CRS but no transform: classify does not again
CRS_ONLY_SAID = "crs_without_transform_said"


def gdal_name(path: str | os.PathLike) -> str:
    """The name to hand GDAL for the file at ``path``: absolute, since GDAL reads a name that starts with a driver
    prefix (``GTIFF_DIR:1:x.tif``, ``NETCDF:...``, ``/vsizip/``...) as that driver's syntax: a file so named in the
    working directory opened another file."""
    return os.path.abspath(path)


def check_gdal_side_files(path: Path) -> None:
    """Refuse a pipe or device beside the raster under a name GDAL may open with it (its stem with any ending:
    .aux.xml, .msk, .ovr, .aux, .tfw, .wld, .rpb, an ENVI .hdr...): GDAL's open then blocked for ever on a FIFO,
    and a first Ctrl-C did not end it."""
    stem = path.name.split(".")[0]
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(stem + ".") or entry.name == path.name:
            continue
        try:
            odd = not entry.is_file() and not entry.is_dir()
        except OSError:
            continue
        if odd:
            raise SceneError(f"{path.parent / entry.name}, beside the scene {path}, is not a regular file (a pipe or "
                             "a device): GDAL may read it when it opens the scene (a side file or header of that "
                             "name), and would wait on it for ever; remove it or replace it with a file")
    _check_side_files_read(path, [e.name for e in entries])


# the side files GDAL reads for a scene that change what it reads (mask, nodata, scales, georeferencing, an ENVI or
# EHdr header): after its whole name, or after its name without the last suffix
_AFTER_NAME = (".aux.xml", ".msk", ".hdr")
_AFTER_STEM = (".aux.xml", ".aux", ".hdr", ".tfw", ".tifw", ".wld", ".rpb", "_rpc.txt")
_PAM_KEYS = ("<NoDataValue", "<GeoTransform", "<SRS", "<Offset", "<Scale")


def _check_side_files_read(path: Path, names: list[str]) -> None:
    """Refuse a scene whose side files GDAL is configured to ignore (a process-wide setting, common in cloud
    images): ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR`` hides every side file (an external ``.msk`` mask: its
    pixels were classified as land cover, exit 0), ``GDAL_PAM_ENABLED=NO`` the ``.aux.xml`` (per-band nodata)."""
    from rasterio.env import get_gdal_config

    name, stem = path.name.lower(), path.stem.lower()
    wanted = {name + e for e in _AFTER_NAME} | {stem + e for e in _AFTER_STEM}
    sides = [n for n in names if n.lower() in wanted]  # (GDAL finds them whatever their case)
    if not sides:
        return
    hide = str(get_gdal_config("GDAL_DISABLE_READDIR_ON_OPEN", normalize=False) or "").upper()
    if hide == "EMPTY_DIR":
        raise SceneError(f"{path}: GDAL is set to ignore the files beside it (GDAL_DISABLE_READDIR_ON_OPEN="
                         f"EMPTY_DIR), but {path.parent / sides[0]} is there, and what it says of the scene (mask, "
                         "nodata, georeferencing, header) would be lost: unset GDAL_DISABLE_READDIR_ON_OPEN (or set "
                         "it to FALSE) for this run")
    pam = str(get_gdal_config("GDAL_PAM_ENABLED", normalize=False) or "YES").upper()
    aux = next((path.parent / n for n in sides if n.lower() == name + ".aux.xml"), None)
    if pam in ("NO", "FALSE", "OFF", "0") and aux is not None:
        try:
            with open(aux, encoding="utf-8", errors="replace") as f:
                text = f.read(1 << 20)
        except OSError:
            return
        said = [k[1:] for k in _PAM_KEYS if k in text]
        if said:
            raise SceneError(f"{path}: GDAL is set not to read .aux.xml files (GDAL_PAM_ENABLED={pam}), but {aux} "
                             f"gives the scene's {', '.join(said)}, which would be lost (nodata read as data): "
                             "unset GDAL_PAM_ENABLED (or set it to YES) for this run")


_DRIVER_NAMES = {"GTiff": "GeoTIFF", "ENVI": "ENVI", "EHdr": "ESRI EHdr"}


def open_geotiff(path: Path, chunks, driver: str = "GTiff") -> xr.DataArray:
    """A GeoTIFF (or, with ``driver``, an ENVI or EHdr binary) as a lazy ``(band, y, x)`` scene. Only that GDAL
    driver opens it: a GDAL VRT (XML) saved under a .tif name or as an ENVI binary was opened as a VRT, whose
    sources read any local file, device or pipe (a hang) or a URL (``/vsicurl/``)."""
    import rasterio

    check_gdal_side_files(path)
    undecoded: set[str] = set()

    def drop(message: str) -> bool:
        if message.startswith(_UNDECODED):
            undecoded.add(message)
            return True
        return False

    with dropped(drop, "rasterio._base"):  # (a filter of this call's own: other threads' opens keep theirs)
        try:
            with rasterio.open(gdal_name(path), driver=driver) as src:
                bh, bw = src.block_shapes[0]
                h, w, count = src.height, src.width, src.count
                tags = [src.tags(i) for i in range(1, count + 1)]
                descriptions = _band_descriptions(src)
                nodata = src.nodata
                ds_tags = src.tags()
                envi_tags = src.tags(ns="ENVI")
                imagery = [src.tags(i, ns="IMAGERY") for i in range(1, count + 1)]  # GDAL >= 3.10's wavelengths
                rpcs = getattr(src, "rpcs", None)
                # a CRS without a geotransform: rasterio's NotGeoreferencedWarning (quiet in our calls) was the only
                # word, and the map sat at the CRS's origin in 1-unit pixels
                crs_only = (src.crs.to_string() if src.crs is not None and src.transform.is_identity
                            and not src.gcps[0] and not rpcs else None)
                # a last band that is alpha (gdalwarp -dstalpha) is no spectral band: left out, its 0s nodata
                alpha = count > 1 and src.colorinterp[-1] == rasterio.enums.ColorInterp.alpha
                flags = rasterio.enums.MaskFlags
                masked = any(flags.per_dataset in f and not (alpha and flags.alpha in f) for f in src.mask_flag_enums)
                band_nodata = list(src.nodatavals[:count - int(alpha)])
                if driver == "GTiff" and nodata is None and not masked:
                    _check_unwritten_blocks(src, path)
                # band names that are not UTF-8 raise UnicodeDecodeError in rasterio's ``descriptions``, which
                # rioxarray reads too: it opens a VRT of the file then, which has the file's values and placement
                # and no band names
                source = gdal_name(path) if descriptions is not None else _vrt_without_names(src, tags, ds_tags)
        except rasterio.errors.RasterioIOError as e:
            kind = _DRIVER_NAMES.get(driver, driver)
            raise SceneError(f"{path} could not be opened as a {kind} raster ({e}); is it a complete {kind} file? "
                             f"(GDAL's {driver} driver alone reads it: a file of another format under this name, a "
                             "GDAL VRT among them, is not read)") from None
        if crs_only is not None:
            warnings.warn(f"{path} has a CRS ({crs_only}) but no geotransform (nor GCPs): its map would lie at the "
                          "CRS's origin in 1-unit pixels, far from its ground; write its transform (gdal_edit.py "
                          f"-a_ullr ULX ULY LRX LRY {path}), or drop the CRS for a map in pixel coordinates",
                          UserWarning, stacklevel=user_stacklevel())
        default = {"band": -1, "y": aligned_chunk(bh, h), "x": aligned_chunk(bw, w)}
        # per-band scales/offsets are kept in the encoding (_scales_to_encoding): rioxarray's note on them
        with warnings_ignored(UserWarning, "(Scales|Offsets) differ across bands"):
            try:
                da = rioxarray.open_rasterio(source, chunks=default, mask_and_scale=False,
                                             driver=driver if source == gdal_name(path) else "VRT")
            except ValueError as e:  # rioxarray parses an ENVI header's lists into numbers: 'n/a', '450 nm'
                if not envi_tags:
                    raise SceneError(f"{path} could not be read as a raster ({type(e).__name__}: {e})") from None
                lists = [k for k in ("wavelength", "fwhm") if k in envi_tags]
                raise SceneError(f"the ENVI header of {path}: its {' or '.join(lists) or 'lists'} could not be "
                                 f"read as numbers ({e}); write them as plain numbers (e.g. {{450.5, 460.2, ...}}, "
                                 "the unit in 'wavelength units'), or remove the list from the header") from None
    if undecoded or descriptions is None:
        log.info("%s: %d metadata item(s)%s not UTF-8 text (a Latin-1 header?), left out", path, len(undecoded),
                 " and the band names are" if descriptions is None else " are")
    if descriptions is None:
        descriptions = [None] * count
    if alpha:
        tags, descriptions = tags[:-1], descriptions[:-1]
    closer = getattr(da, "_close", None)  # the file's: the new arrays made below do not carry it
    if isinstance(da, list):
        raise SceneError(f"{path} holds {len(da)} subdatasets; open one of them")
    if isinstance(da, xr.Dataset):
        raise SceneError(f"{path} opened as a Dataset; expected a single multi-band raster")
    wl = _gdal_wavelengths(tags, descriptions, ds_tags, envi_tags, imagery[:len(tags)], where=str(path))
    if "wavelength" in da.coords:  # rioxarray adds ENVI wavelengths as a (dask) coordinate in file units
        da = da.drop_vars([c for c in ("wavelength", "fwhm") if c in da.coords])
    per_band = len({"nan" if v is not None and math.isnan(v) else v for v in band_nodata}) > 1
    if nodata is not None and not per_band:
        da = with_nodata(da, nodata, f"{path}'s nodata value")
    if per_band or alpha:
        da = _nan_masked(da, path, band_nodata if per_band else None, alpha=alpha)
    da = finish_scene(_scales_to_encoding(da), path, "geotiff", wavelengths=wl, chunks=chunks, bbl=_gdal_bbl(tags))
    if masked:
        da = _with_gdal_mask(da, path, driver)
    if rpcs is not None:  # placed by rational polynomial coefficients (a level-1 product); see georef.scene_georef
        da.encoding["rpcs"] = rpcs.to_dict()
    if crs_only is not None:
        da.encoding[CRS_ONLY_SAID] = True
    da.set_close(closer)
    return da


def _band_descriptions(src) -> list[str | None] | None:
    """The band names (GDAL descriptions) of open rasterio dataset ``src``, None when they are not UTF-8 text."""
    try:
        return list(src.descriptions)
    except UnicodeDecodeError:
        return None


def _vrt_without_names(src, tags: list[dict[str, str]], ds_tags: Mapping[str, str]) -> str:
    """A GDAL VRT (XML text, which rasterio opens as a file) over every band of open dataset ``src`` with its size,
    CRS, transform or GCPs, data types, nodata values, scales/offsets and readable metadata, but no band names:
    rioxarray reads a file's band names, and rasterio raises UnicodeDecodeError for names that are not UTF-8."""
    import xml.etree.ElementTree as ET

    from rasterio.dtypes import dtype_rev, typename_fwd

    def metadata(parent: ET.Element, items: Mapping[str, str]) -> None:
        if items:
            md = ET.SubElement(parent, "Metadata")
            for k, v in items.items():
                ET.SubElement(md, "MDI", key=k).text = v

    root = ET.Element("VRTDataset", rasterXSize=str(src.width), rasterYSize=str(src.height))
    if src.crs is not None:
        ET.SubElement(root, "SRS").text = src.crs.to_wkt()
    if not src.transform.is_identity:
        ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in src.transform.to_gdal())
    gcps, gcp_crs = src.gcps
    if gcps:
        listed = ET.SubElement(root, "GCPList", Projection=gcp_crs.to_wkt() if gcp_crs is not None else "")
        for g in gcps:
            ET.SubElement(listed, "GCP", Id=str(g.id or ""), Info=str(g.info or ""), Pixel=repr(g.col),
                          Line=repr(g.row), X=repr(g.x), Y=repr(g.y), Z=repr(g.z or 0.0))
    metadata(root, ds_tags)
    binary = str(Path(src.name).absolute())
    for i in range(src.count):
        band = ET.SubElement(root, "VRTRasterBand", dataType=typename_fwd[dtype_rev[src.dtypes[i]]], band=str(i + 1))
        metadata(band, tags[i])
        if src.nodatavals[i] is not None:
            ET.SubElement(band, "NoDataValue").text = repr(float(src.nodatavals[i]))
        if src.offsets[i] != 0:
            ET.SubElement(band, "Offset").text = repr(float(src.offsets[i]))
        if src.scales[i] != 1:
            ET.SubElement(band, "Scale").text = repr(float(src.scales[i]))
        source = ET.SubElement(band, "SimpleSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = binary
        ET.SubElement(source, "SourceBand").text = str(i + 1)
    return ET.tostring(root, encoding="unicode")


def with_nodata(da: xr.DataArray, value: float, what: str) -> xr.DataArray:
    """``da`` with nodata ``value``; a value its dtype cannot hold (-9999 or 0.5 in a uint16 file) is left out with
    a log line: no pixel can hold it, so it masks nothing (rioxarray raised OverflowError for it, and GDAL reads an
    ENVI header's 0.5 as 0 for uint16, which masked the zeros)."""
    if not holds_value(da.dtype, value):
        log.info("%s (%s) cannot occur in a %s scene, so it masks nothing: left out", what, value, da.dtype)
        return da.rio.write_nodata(None, encoded=False)
    return da.rio.write_nodata(value, encoded=False)


def _with_gdal_mask(da: xr.DataArray, path: Path, driver: str = "GTiff") -> xr.DataArray:
    """Pixels that a GDAL per-dataset mask (an internal mask band or a ``.msk`` file) marks invalid read as NaN, so
    they are nodata (class 0), as GIS software reads them; an integer scene is read as floats for it (exactly:
    float32 up to 16 bits), and NaN is its nodata value where it declares none."""
    import dask.array as dsa

    encoding = dict(da.encoding)
    da = da.astype(nan_capable(da.dtype))
    valid = dsa.zeros((da.sizes["y"], da.sizes["x"]), chunks=(da.chunks[1], da.chunks[2]), dtype=bool)
    valid = valid.map_blocks(_gdal_valid, str(path), driver, dtype=bool)
    out = da.copy(data=dsa.where(valid[None], da.data, np.array(np.nan, da.dtype)))
    out.encoding = encoding
    if nodata_attr(out) is None:
        out = out.rio.write_nodata(np.nan, encoded=False)
    note = "per-dataset mask: invalid pixels read as NaN (nodata)"
    out.attrs["gdal_mask"] = f"{out.attrs['gdal_mask']}; {note}" if "gdal_mask" in out.attrs else note
    log.info("%s has a GDAL mask band: the pixels it marks invalid are nodata", path)
    return out


def _nan_masked(da: xr.DataArray, path: Path, band_nodata: list[float | None] | None, *,
                alpha: bool) -> xr.DataArray:
    """``da`` (as rioxarray opened the GeoTIFF) with each band's own nodata value (``band_nodata``, when the bands
    declare different ones: GDAL's ``nodata`` is band 1's, which masked 65535 holes nowhere and 0s in bands whose
    nodata is 65535) and, with ``alpha``, the pixels its last (alpha) band marks 0 read as NaN, that band left out
    (as a warp's fill, they were classified). Integers are read as floats for it, as :func:`_with_gdal_mask` does;
    NaN is the nodata value then, unless one value for every band is declared."""
    import dask.array as dsa

    n = da.sizes["band"] - int(alpha)
    data = da.data
    kept = da.isel(band=slice(0, n))
    count = da.sizes["band"]  # per-band attrs (long_name, scales, offsets) lose the alpha band's entry too
    kept.attrs = {k: (v[:n] if alpha and isinstance(v, (tuple, list)) and len(v) == count else v)
                  for k, v in da.attrs.items()}
    ftype = nan_capable(da.dtype)
    hit = None
    notes = []
    if band_nodata is not None:
        usable = [v is not None and not math.isnan(v) and holds_value(da.dtype, v) for v in band_nodata]
        values = np.array([v if ok else 0 for v, ok in zip(band_nodata, usable)], dtype=da.dtype)[:, None, None]
        hit = (kept.data == values) & np.array(usable)[:, None, None]
        unheld = sorted({v for v, ok in zip(band_nodata, usable) if v is not None and not math.isnan(v) and not ok})
        notes.append(f"its bands declare different nodata values ({_band_values(band_nodata)}): each band's own "
                     "reads as NaN (nodata)" + (f"; {', '.join(f'{v:g}' for v in unheld)} cannot occur in "
                                                f"{da.dtype} and masks nothing" if unheld else ""))
    if alpha:
        hole = (data[n] == 0)[None]  # (1, y, x): the same chunks as the bands
        hit = hole if hit is None else hit | hole
        notes.append(f"band {count} is an alpha band: left out of the scene, and the pixels it marks 0 read as NaN "
                     "(nodata)")
    out = kept.copy(data=dsa.where(hit, np.array(np.nan, ftype), kept.data.astype(ftype)))
    if band_nodata is not None or nodata_attr(out) is None:
        out = out.rio.write_nodata(np.nan, encoded=False)
    if band_nodata is not None:
        out.attrs["band_nodata"] = _band_values(band_nodata)
    if alpha:
        out.attrs["gdal_mask"] = (f"alpha band {count}: pixels with alpha 0 read as NaN (nodata); the band is "
                                  "left out of the scene")
    log.info("%s: %s", path, "; ".join(notes))
    return out


def _band_values(values: Sequence[float | None]) -> str:
    """Per-band values as 'band 1: 0; bands 2-200: 65535', by value in order of first band (cut at ~150 chars)."""
    groups: dict[str, list[int]] = {}
    for i, v in enumerate(values, start=1):
        groups.setdefault("none" if v is None else f"{v:g}", []).append(i)
    parts = [f"{'bands' if len(bands) > 1 else 'band'} {band_runs(bands)}: {v}" for v, bands in groups.items()]
    text = "; ".join(parts)
    return text if len(text) <= 150 else text[:147] + "..."


def _check_unwritten_blocks(src: Any, path: Path, limit: int = 100_000) -> None:
    """Refuse a GeoTIFF with blocks never written (a sparse file, ``SPARSE_OK``, whose writer stopped): GDAL reads
    them as 0, which was classified as land cover without a word (a zarr store's missing chunks are refused).
    Band 1's block offsets, looked up in GDAL's TIFF metadata domain; skipped beyond ``limit`` blocks."""
    bh, bw = src.block_shapes[0]
    rows, cols = -(-src.height // bh), -(-src.width // bw)
    if rows * cols > limit:
        return
    missing = [(y, x) for y in range(rows) for x in range(cols)
               if src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=1) is None]
    if missing:
        y, x = missing[0]
        first = f"rows {y * bh}:{min(src.height, (y + 1) * bh)}, cols {x * bw}:{min(src.width, (x + 1) * bw)}"
        raise SceneError(f"{path}: {len(missing)} of its {rows * cols} blocks ({bh} x {bw} pixels) were never written "
                         f"(a sparse GeoTIFF whose writer stopped? the first at {first}), and GDAL reads them as 0, "
                         "which would be "
                         "classified as land cover: write the file again, or declare its nodata (gdal_edit.py "
                         "-a_nodata 0 FILE) to make those pixels class 0")


def _gdal_valid(block: np.ndarray, path: str, driver: str = "GTiff", block_info: dict | None = None) -> np.ndarray:
    """One block of a GDAL per-dataset mask: True where the pixel is valid."""
    import rasterio
    from rasterio.windows import Window

    (y0, y1), (x0, x1) = block_info[0]["array-location"]
    with rasterio.open(gdal_name(path), driver=driver) as src:
        return src.read_masks(1, window=Window(x0, y0, x1 - x0, y1 - y0)) > 0


def _scales_to_encoding(da: xr.DataArray) -> xr.DataArray:
    """GDAL's band scales/offsets (EnMAP: 0.0001), not applied, moved from rioxarray's CF-named attrs
    (``scale_factor``/``add_offset``, or ``scales``/``offsets`` when bands differ) to ``encoding["scales"]`` /
    ``["offsets"]``: with the CF names, ``to_netcdf``/``to_zarr`` of the stored counts wrote a file whose reader
    decodes them (x 0.0001), so the same pixels gave another map; ``rio.to_raster`` writes the band scales back
    from the encoding."""
    n = da.sizes["band"]
    for one, per_band in (("scale_factor", "scales"), ("add_offset", "offsets")):
        values = da.attrs.pop(per_band, None)
        single = da.attrs.pop(one, None)
        if values is None and single is not None:
            values = (single,) * n
        if values is not None:
            da.encoding[per_band] = tuple(float(v) for v in values)
    return da


def _gdal_bbl(tags: list[dict[str, str]]) -> list[int] | None:
    """Per-band ``bbl`` metadata (1 good, 0 bad, as EnMAP's GeoTIFFs carry it), when every band has it."""
    try:
        return [int(float(t["bbl"])) for t in tags] if tags and all("bbl" in t for t in tags) else None
    except ValueError:
        return None


def _gdal_wavelengths(tags: list[dict[str, str]], descriptions: list[str | None],
                      ds_tags: Mapping[str, str], envi_tags: Mapping[str, str] | None = None,
                      imagery: list[dict[str, str]] | None = None, where: str = "the scene") -> np.ndarray | None:
    """Wavelengths (nm) from per-band ``wavelength`` metadata, else the IMAGERY domain's ``CENTRAL_WAVELENGTH_UM``
    (GDAL >= 3.10's), else from the ENVI metadata domain's list (``wavelength = {...}``, as GDAL writes an ENVI
    header's into a GeoTIFF), else from band names such as 'band 1 (0.4554 Micrometers)' or '460.0 nm'. Band
    names that say other wavelengths than the metadata taken are warned of (which is right cannot be told)."""
    named = wavelengths_in_names(descriptions)
    found = _metadata_wavelengths(tags, ds_tags, envi_tags, imagery)
    if found is None:
        return named
    if named is not None and len(named) == len(found) and np.isfinite(found).all() and np.isfinite(named).all() \
            and not np.allclose(named, found, rtol=0.01, atol=1.0):
        i = int(np.argmax(np.abs(named - found)))
        warnings.warn(f"{where}: its band names say other wavelengths than its band metadata (band {i + 1}: "
                      f"{named[i]:g} nm in its name, {found[i]:g} nm in its metadata); the metadata's are used, and "
                      "a model's check of the band order follows them: correct whichever is wrong",
                      UserWarning, stacklevel=user_stacklevel())
    return found


def _metadata_wavelengths(tags: list[dict[str, str]], ds_tags: Mapping[str, str],
                          envi_tags: Mapping[str, str] | None, imagery: list[dict[str, str]] | None
                          ) -> np.ndarray | None:
    try:
        if tags and all("wavelength" in t for t in tags):
            units = tags[0].get("wavelength_units") or ds_tags.get("wavelength_units")
            return wavelengths_nm([float(t["wavelength"]) for t in tags], units)
    except ValueError:
        pass
    try:
        if imagery and len(imagery) == len(tags) and all("CENTRAL_WAVELENGTH_UM" in t for t in imagery):
            return wavelengths_nm([float(t["CENTRAL_WAVELENGTH_UM"]) for t in imagery], "micrometers")
    except ValueError:
        pass
    for domain in (envi_tags or {}, ds_tags):
        if "wavelength" in domain:
            try:
                from .envi import envi_list  # (envi reads its cubes through this module)

                values = [float(v) for v in envi_list(domain["wavelength"])]
            except ValueError:
                continue
            if len(values) == len(tags):
                return wavelengths_nm(values, domain.get("wavelength_units") or domain.get("wavelength units"))
    return None
