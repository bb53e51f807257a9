"""ENVI scenes: the header parsed (its data file found beside it), its layout, byte order and size checked;
the cube itself is read through GDAL's ENVI driver (:mod:`hsi_engine.geotiff`)."""

from __future__ import annotations

import logging
import math
import re
import warnings
from pathlib import Path

import xarray as xr

from .cube import with_bbl
from .errors import SceneError, SceneNotFoundError, user_stacklevel
from .geotiff import check_gdal_side_files, gdal_name, open_geotiff, with_nodata
from .logs import warnings_ignored
from .wavelengths import not_wavelengths, to_nm

log = logging.getLogger(__name__)


_ENVI_DATA_SUFFIXES = (".bsq", ".bil", ".bip", ".img", ".dat", ".raw", "")


# an ENVI header is text of a few KB (~100 KB with per-band names, wavelength and fwhm lists for 400+ bands): one
# of more than 4 MiB is not a header (and would take seconds to parse)
_ENVI_HEADER_MAX = 4 * 1024 * 1024


def _is_envi_header(hdr: Path) -> bool:
    """Whether ``hdr`` starts with ENVI's ``ENVI`` magic line (an ESRI EHdr header, also ``.hdr``, does not)."""
    try:
        with open(hdr, "rb") as f:
            return f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n").upper().startswith(b"ENVI")
    except OSError:
        return True  # unreadable: the ENVI path names the problem


def _unicode_mark(hdr: Path) -> str | None:
    """``"utf-8"`` when ``hdr`` starts with a UTF-8 byte-order mark (Notepad's 'UTF-8 with BOM'), ``"utf-16"`` when it
    is UTF-16 text starting with ``ENVI`` (Notepad's 'Unicode'); else None. GDAL's ENVI driver recognises a header
    only by its first bytes, ``ENVI``: it reads neither, and the scene 'could not be opened ... not recognized'."""
    try:
        with open(hdr, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = head[:len(head) // 2 * 2].decode("utf-16", errors="replace")
        return "utf-16" if text.lstrip(" \t\r\n").upper().startswith("ENVI") else None
    return None


def _unicode_header_error(hdr: Path, mark: str) -> SceneError:
    """The error for a header GDAL does not recognise because of how it is encoded (see :func:`_unicode_mark`)."""
    what = ("starts with a UTF-8 byte-order mark (bytes EF BB BF, as Notepad's 'UTF-8 with BOM' writes)"
            if mark == "utf-8" else "is UTF-16 text (as Notepad's 'Unicode' writes)")
    encoding = "utf-8-sig" if mark == "utf-8" else "utf-16"
    return SceneError(f"ENVI header {hdr} {what}, so GDAL does not recognise it as an ENVI header (it must start "
                      "with the bytes 'ENVI'); re-save it as UTF-8 without a byte-order mark (Notepad: Save As, "
                      "Encoding 'UTF-8'), e.g. python -c \"import sys; p = sys.argv[1]; t = open(p, encoding="
                      f"'{encoding}').read(); open(p, 'w', encoding='utf-8').write(t)\" \"{hdr}\"")


def parse_envi_header(hdr: Path) -> dict[str, str]:
    """``key -> raw value`` of an ENVI header (braced values may span lines).

    Keys are lower-cased, with GDAL's underscores read as spaces (GDAL's ``data_type`` is ``data type``); a line
    without ``=`` (the ``ENVI`` magic, a ``;`` comment) is skipped. A value starting with ``{`` runs to the first
    ``}``, on its line or a later one (``key =`` with the ``{`` on the next line too); an unclosed ``{`` is only
    its own line. Linear in the header's size, which is capped at ``_ENVI_HEADER_MAX``."""
    size = hdr.stat().st_size
    with open(hdr, "rb") as f:
        raw = f.read(_ENVI_HEADER_MAX + 1)
    try:  # UTF-8, whatever the locale; else Latin-1 (ENVI on Windows), which reads any byte
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # as text mode's universal newlines read them
    if len(text) > _ENVI_HEADER_MAX:
        raise SceneError(f"ENVI header {hdr} is {max(size, len(text)):,} bytes; expected a text header of at most "
                         f"{_ENVI_HEADER_MAX:,} bytes (ENVI headers are a few KB, some 100 KB with per-band lists "
                         "for hundreds of bands): this is not an ENVI header. Pass the scene's own .hdr, or cut "
                         "this one down to its 'key = value' lines")
    lines = text.split("\n")
    out: dict[str, str] = {}
    no_brace_after = len(lines)  # the first line from which no line holds a '}' (scanning past it is useless)
    i = 0
    while i < len(lines):
        key, eq, value = lines[i].partition("=")
        i += 1
        key = key.strip().lower().replace("_", " ")
        if not eq or not key:
            continue
        rest = value.lstrip()  # as written, for a value running on to later lines
        value = rest.rstrip()
        if not value:  # 'key =' with the braced value on the next non-blank line
            j = i
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and lines[j].lstrip().startswith("{"):
                rest, i = lines[j].lstrip(), j + 1
                value = rest.rstrip()
        if value.startswith("{"):
            close = value.find("}")
            if close >= 0:
                value = value[:close + 1]
            elif i < no_brace_after:
                j = i
                while j < len(lines) and "}" not in lines[j]:
                    j += 1
                if j < len(lines):
                    last = lines[j]
                    value = "\n".join([rest, *lines[i:j], last[:last.index("}") + 1]]).strip()
                    i = j + 1
                else:  # unclosed to the end: the value is its own line, and so is any later unclosed one
                    no_brace_after = i
        out[key] = value
    return out


def envi_list(value: str) -> list[str]:
    return [s.strip() for s in value.strip().lstrip("{").rstrip("}").split(",") if s.strip()]


def envi_header_beside(path: Path) -> Path | None:
    """The header of ENVI binary ``path``: ``scene.hdr`` or ``scene.img.hdr``, in either case (as GDAL finds it)."""
    if path.suffix.lower() == ".hdr" or not path.is_file():
        return None
    for base in (path.with_suffix(""), path):
        for suf in (".hdr", ".HDR"):
            cand = Path(str(base) + suf)
            if cand.is_file():
                return cand
    try:  # a header in any other case (scene.Hdr beside scene.Bsq), as the header finds its binary in any case
        for base in (path.with_suffix(""), path):
            for cand in base.parent.iterdir():
                if cand.name.lower() == base.name.lower() + ".hdr" and cand.name.startswith(base.name) \
                        and cand.is_file():
                    return cand
    except OSError:  # an unlistable directory: no header found
        pass
    return None


def envi_paths(path: Path) -> tuple[Path, Path]:
    """(header, binary) for an ENVI scene given either file; suffixes match in any case (``SCENE.BSQ``)."""
    if path.suffix.lower() == ".hdr":
        hdr = path
        stem = path.with_suffix("")
        by_suffix = {}
        if path.parent.is_dir():
            for cand in path.parent.iterdir():
                if cand.with_suffix("") == stem and cand != hdr and cand.is_file():
                    by_suffix.setdefault(cand.suffix.lower(), cand)
        for suf in _ENVI_DATA_SUFFIXES:
            if suf in by_suffix:
                return hdr, by_suffix[suf]
        if stem.is_file():
            return hdr, stem
        raise SceneError(f"ENVI header {hdr} has no binary beside it; expected one of "
                         f"{[hdr.with_suffix(s).name for s in _ENVI_DATA_SUFFIXES]}; for a binary of another name "
                         "(scene.rfl), pass the binary's path: its header is found beside it")
    hdr = envi_header_beside(path)
    if hdr is not None:
        return hdr, path
    raise SceneError(f"ENVI binary {path} has no header; expected {path.with_suffix('.hdr')} beside it")


# bytes per value of ENVI's ``data type`` codes (those GDAL's ENVI driver reads), and their names
_ENVI_BYTES = {1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 9: 16, 12: 2, 13: 4, 14: 8, 15: 8}
_ENVI_TYPES = {1: "uint8", 2: "int16", 3: "int32", 4: "float32", 5: "float64", 6: "complex64", 9: "complex128",
               12: "uint16", 13: "uint32", 14: "int64", 15: "uint64"}
_ENVI_INTERLEAVES = ("bsq", "bil", "bip")


def _envi_int(value: str) -> int:
    """An integer header value: '512' (or '512.0', as GDAL's atoi reads it); ValueError otherwise."""
    try:
        return int(value)
    except ValueError:
        f = float(value)
        if not f.is_integer():
            raise
        return int(f)


def _envi_layout(header: dict[str, str], hdr: Path, data: Path) -> tuple[list[int], int, str]:
    """``([samples, lines, bands], data type, interleave)`` of an ENVI header, each required (as the ENVI format
    says): GDAL reads a header without ``data type`` as bytes and one without a known ``interleave`` as bsq, so
    an int16 BIP cube became a wrong map without a word."""
    shape = []
    for key, what in (("samples", "columns"), ("lines", "rows"), ("bands", "bands")):
        if key not in header:
            raise SceneError(f"ENVI header {hdr} has no '{key}' key; expected '{key} = N' (N the scene's count "
                             f"of {what}, a positive integer): add it to the header")
        try:
            n = _envi_int(header[key])
        except ValueError:
            n = 0
        if n <= 0:
            raise SceneError(f"ENVI header {hdr}: '{key} = {header[key]}' is not a positive integer; expected "
                             f"'{key} = N' with N the scene's count of {what}: fix that line")
        shape.append(n)
    codes = ", ".join(f"{c} ({t})" for c, t in _ENVI_TYPES.items())
    if "data type" not in header:
        hint = ""
        try:
            offset = _envi_int(header.get("header offset", "0") or "0")
            per_value = (data.stat().st_size - offset) / math.prod(shape)
        except (ValueError, OSError):
            per_value = 0
        if per_value in (1, 2, 4, 8, 16):
            fits = [f"{c} ({t})" for c, t in _ENVI_TYPES.items() if _ENVI_BYTES[c] == per_value]
            hint = (f"; the binary's size gives {int(per_value)} bytes a value: "
                    f"{' or '.join(fits)}")
        raise SceneError(f"ENVI header {hdr} has no 'data type' key; expected 'data type = N' with N one of "
                         f"{codes}{hint}. GDAL would read the values as bytes: add the line for the type the "
                         "binary was written in")
    try:
        code = _envi_int(header["data type"])
    except ValueError:
        code = None
    if code not in _ENVI_BYTES:
        raise SceneError(f"ENVI header {hdr}: 'data type = {header['data type']}' is not an ENVI data type GDAL "
                         f"reads; expected one of {codes}: fix that line")
    if "interleave" not in header:
        raise SceneError(f"ENVI header {hdr} has no 'interleave' key; expected 'interleave = bsq', 'bil' or "
                         "'bip' (bands one after another, interleaved by line, or by pixel). GDAL would guess "
                         "bsq: add the line for the layout the binary was written in")
    interleave = header["interleave"].strip().lower()
    if interleave not in _ENVI_INTERLEAVES:
        raise SceneError(f"ENVI header {hdr}: 'interleave = {header['interleave']}' is not an ENVI interleave; "
                         "expected bsq, bil or bip (bands one after another, interleaved by line, or by pixel; "
                         "any case). GDAL would read it as bsq: fix that line")
    if _ENVI_BYTES[code] > 1:  # (one byte a value has no byte order: uint8 headers often leave it out)
        _check_envi_byte_order(header, hdr, code)
    return shape, code, interleave


def _check_envi_byte_order(header: dict[str, str], hdr: Path, code: int) -> None:
    """Refuse a header of values wider than a byte without a readable ``byte order`` (0 little-endian, 1
    big-endian): GDAL reads a missing one as little-endian (a value as C's atoi reads it: 0 little-endian, any other
    big-endian), so big-endian data (as older ENVI on Sun/SGI/PowerPC, and some instruments, wrote it) became a
    wrong map without a word."""
    what = f"its {_ENVI_BYTES[code]}-byte {_ENVI_TYPES[code]} values ('data type = {code}')"
    fix = ("'byte order = 0' (little-endian: Intel/AMD x86, ARM; what most files are) or 'byte order = 1' "
           "(big-endian: older Sun/SGI/PowerPC ENVI files, some instruments)")
    if "byte order" not in header:
        raise SceneError(f"ENVI header {hdr} has no 'byte order' key for {what}; expected {fix}. GDAL would "
                         "read them as little-endian: add the line for the byte order the binary was written in")
    try:
        order = _envi_int(header["byte order"])
    except ValueError:
        order = None
    if order not in (0, 1):
        leading = re.match(r"\s*[-+]?\d+", header["byte order"])  # what GDAL's atoi reads of it
        gdal = "big" if leading and int(leading.group()) != 0 else "little"
        raise SceneError(f"ENVI header {hdr}: 'byte order = {header['byte order']}' is not an ENVI byte order; "
                         f"expected {fix}. GDAL would read it as {gdal}-endian: fix that line")


def _declared_byte_order(header: dict[str, str]) -> str | None:
    """The byte order GDAL read a checked header's values in (``'little-endian'`` or ``'big-endian'``, as its
    ``byte order`` declares), None for one-byte values: the array it returns is in the machine's order, so a check
    that names the order the file was read in (a byte-swapped scene's warning) takes it from here."""
    if _ENVI_BYTES[_envi_int(header["data type"])] == 1:
        return None
    return "big-endian" if _envi_int(header["byte order"]) == 1 else "little-endian"


def _check_envi_size(header: dict[str, str], hdr: Path, data: Path) -> None:
    """Refuse a binary shorter than its header says (an interrupted download or copy): GDAL reads the missing
    rows as zeros, which were classified as if they were the scene."""
    shape, code, _ = _envi_layout(header, hdr, data)
    size = _ENVI_BYTES[code]
    try:
        offset = _envi_int(header.get("header offset", "0") or "0")
    except ValueError:
        return  # GDAL reports a header it cannot read
    need = offset + math.prod(shape) * size
    have = data.stat().st_size
    if have < need:
        raise SceneError(f"ENVI binary {data} holds {have:,} bytes, but its header {hdr.name} declares "
                         f"{shape[2]} bands x {shape[1]} lines x {shape[0]} samples of {size} bytes"
                         f"{f' after {offset} header bytes' if offset else ''} ({need:,} bytes): the file is "
                         "incomplete (an interrupted download or copy?); fetch it again")


def _gdal_envi_header(data: Path) -> Path | None:
    """The header GDAL's ENVI driver reads binary ``data`` with (among its files, ``rasterio``'s ``src.files``);
    None where GDAL does not open it (the read that follows names the problem) or names no ``.hdr``."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    try:
        with warnings_ignored(NotGeoreferencedWarning, "Dataset has no geotransform"), \
                rasterio.open(gdal_name(data), driver="ENVI") as src:
            files = list(src.files)
    except rasterio.errors.RasterioIOError:
        return None
    return next((Path(f) for f in files if f.lower().endswith(".hdr")), None)


# the keys that say how the binary is read or what its values mean (a description or a date may differ freely)
_READ_KEYS = ("samples", "lines", "bands", "header offset", "data type", "interleave", "byte order", "file type",
              "wavelength", "wavelength units", "fwhm", "bbl", "data ignore value", "data gain values",
              "data offset values", "reflectance scale factor", "map info", "coordinate system string")


def _read_as(header: dict[str, str]) -> dict[str, tuple]:
    """The read keys' values as what they say: case-folded words and numbers as numbers (``BSQ`` is ``bsq``,
    ``-99`` is ``-99.0``, ``0.46`` is ``0.460000``), however the header spaces or writes them."""
    def value(token: str) -> float | str:
        try:
            return float(token)
        except ValueError:
            return token
    return {k: tuple(value(t) for t in re.split(r"[\s,{}]+", header[k].strip().lower()) if t)
            for k in _READ_KEYS if k in header}


def _check_gdal_header(header: dict[str, str], hdr: Path, data: Path) -> None:
    """Refuse an ENVI binary that GDAL reads with another header than ``hdr``, the one parsed here (its layout
    checked, its wavelengths, bad bands and nodata read): with ``scene.hdr`` and a stale ``scene.img.hdr`` beside
    ``scene.img`` each side read its own, and a bsq cube read as bil was classified without a word. Two headers
    that say the same are read."""
    gdal_hdr = _gdal_envi_header(data)
    if gdal_hdr is None:
        return
    try:
        if gdal_hdr.samefile(hdr) or _read_as(parse_envi_header(gdal_hdr)) == _read_as(header):
            return
    except (OSError, SceneError):
        pass  # unreadable, gone or not a header: not the one parsed, so refused as one that differs
    hdr = hdr.absolute()  # (GDAL names its own absolute)
    raise SceneError(f"ENVI binary {data} has two headers beside it that differ: {hdr} (the one hsi-engine read) and "
                     f"{gdal_hdr} (the one GDAL reads the binary with), so its values would not be read as the "
                     "header checked here says; remove or rename the stale one, keeping the header the binary was "
                     f"written with (e.g. mv '{gdal_hdr}' '{gdal_hdr}.old' if that one is stale)")


def open_envi(path: Path, chunks) -> xr.DataArray:
    check_gdal_side_files(path)  # before the header is looked for: a pipe there would block the look
    hdr, data = envi_paths(path)
    if not data.is_file():
        raise SceneNotFoundError(f"ENVI binary {data} not found")
    check_gdal_side_files(data)  # before the header is read here: a pipe there would block this read too
    mark = _unicode_mark(hdr)
    if mark == "utf-16":  # this parser cannot read it either
        raise _unicode_header_error(hdr, mark)
    if not _is_envi_header(hdr):  # an ESRI EHdr .hdr beside a .bil/.bsq: GDAL's EHdr driver reads it
        return open_geotiff(data, chunks, driver="EHdr")
    header = parse_envi_header(hdr)
    if header.get("file compression", "0").strip() not in ("0", ""):
        raise SceneError(f"{hdr} declares 'file compression = {header['file compression']}' (gzip); GDAL cannot "
                         "read compressed ENVI. Gunzip the binary and remove that header line.")
    _check_envi_size(header, hdr, data)
    _check_gdal_header(header, hdr, data)
    try:
        da = open_geotiff(data, chunks, driver="ENVI")
    except SceneError:  # this parser reads past a byte-order mark; GDAL (3.10) does not: say which
        if mark == "utf-8":
            raise _unicode_header_error(hdr, mark) from None
        raise
    closer = da._close
    units = header.get("wavelength units")
    try:
        listed = [float(v) for v in envi_list(header["wavelength"])] if "wavelength" in header else None
    except ValueError:
        listed = None
    if "wavelength" in header and not_wavelengths(units, listed):  # band numbers ('Index'): as if no list were given
        log.info("%s: 'wavelength units = %s': its wavelength list holds band numbers (or values of no known unit), "
                 "not wavelengths, so the scene's wavelengths are unknown (a model checks its band count only)", hdr,
                 units)
        da = da.drop_vars([c for c in ("wavelength", "fwhm") if c in da.coords])
    elif "wavelength" in header:
        try:
            wl = to_nm([float(v) for v in envi_list(header["wavelength"])], units)
        except ValueError:
            wl = None
            problem = "holds values that are not numbers"
        else:
            problem = f"lists {len(wl)} values for {da.sizes['band']} bands"
        if wl is not None and len(wl) == da.sizes["band"]:
            da = da.assign_coords(wavelength=("band", wl))
            da["wavelength"].attrs["units"] = "nm"
        else:  # unread, the model's band check is skipped: say so
            da = da.drop_vars([c for c in ("wavelength", "fwhm") if c in da.coords])
            warnings.warn(f"{hdr}: its 'wavelength' entry {problem}, so the scene's wavelengths are unknown and "
                          "are not checked against the model's; fix the header's wavelength list",
                          stacklevel=user_stacklevel())
    if "bbl" in header:
        da = _envi_bbl(da, header["bbl"], hdr)
    if "data ignore value" in header:  # the header's own value: GDAL reads 0.5 as 0 for uint16
        try:
            value = float(header["data ignore value"])
        except ValueError:  # GDAL read it as 0 ('none': atof), which masked every pixel with a 0 in any band
            log.warning("%s: 'data ignore value = %s' is not a number, so the scene has no nodata value (pass "
                        "--nodata, nodata= in Python, if it has one)", hdr, header["data ignore value"].strip()[:40])
            da = da.rio.write_nodata(None, encoded=False)
        else:
            da = with_nodata(da, value, f"{hdr}'s data ignore value")
    da.attrs["source_format"] = "envi"
    da.attrs["envi_interleave"] = header["interleave"].strip().lower()
    order = _declared_byte_order(header)
    if order is not None:
        da.attrs["byte_order"] = order
    da.set_close(closer)
    return da


def _envi_bbl(da: xr.DataArray, value: str, hdr: Path) -> xr.DataArray:
    """``da`` with the header's ``bbl`` (bad band list) as a band coordinate; a list that is not one number per band
    is named and left out, as a wavelength list of the wrong length is (it was dropped without a word, and nodata
    in the bad bands it names then masked their pixels)."""
    try:
        bbl = [float(v) for v in envi_list(value)]
    except ValueError:
        bbl = None
    if bbl is None or not all(math.isfinite(v) for v in bbl):
        problem = "holds values that are not numbers"
    elif len(bbl) != da.sizes["band"]:
        problem = f"lists {len(bbl)} values for {da.sizes['band']} bands"
    else:
        return with_bbl(da, [int(v) for v in bbl])
    warnings.warn(f"{hdr}: its 'bbl' (bad band list) entry {problem}, so every band is taken as good (the nodata "
                  "value in a bad band masks its pixels); fix the header's bbl list: one 0 (bad) or 1 (good) per "
                  "band", stacklevel=user_stacklevel())
    return da
