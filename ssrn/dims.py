"""The one table of dimension names read as a scene's band, y and x axes, shared by the trainer and the engine
(``hsi_engine.cube``): a DataArray is read by these names, never by its dims' order, so a model is trained on the
pixels the engine later classifies."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

# Dimension names accepted for each axis (compared lower-cased); anything here is read as band / y / x.
BAND_NAMES = ("band", "bands", "wavelength", "wavelengths", "spectral", "spectrum", "channel", "channels",
              "lambda", "wl", "bandnumber", "band_number", "z")
Y_NAMES = ("y", "lat", "latitude", "row", "rows", "line", "lines", "northing", "height")
X_NAMES = ("x", "lon", "longitude", "col", "cols", "column", "columns", "sample", "samples", "easting", "width")
DIM_ALIASES = {"band": BAND_NAMES, "y": Y_NAMES, "x": X_NAMES}
SCENE_AXES = ("band", "y", "x")
MAP_AXES = ("y", "x")


def canonical_dim(name: Hashable) -> str | None:
    """``band``, ``y`` or ``x`` for a dimension name in :data:`DIM_ALIASES` (any case), else None."""
    n = str(name).lower()
    return next((axis for axis, names in DIM_ALIASES.items() if n in names), None)


def unnamed(dims: Sequence[Hashable]) -> bool:
    """Whether ``dims`` are xarray's defaults for an array given no names (``dim_0``, ``dim_1``...)."""
    return tuple(str(d) for d in dims) == tuple(f"dim_{i}" for i in range(len(dims)))


def accepted_names(axes: Sequence[str] = SCENE_AXES) -> str:
    """The accepted names of ``axes``, for an error message."""
    return ", ".join(f"{a} {list(DIM_ALIASES[a])}" for a in axes)


def dims_by_axis(dims: Sequence[Hashable], where: str, error: type[Exception],
                 axes: Sequence[str] = SCENE_AXES) -> dict[str, Hashable]:
    """``{axis: the dim read as it}`` for each of ``axes``, by name through :data:`DIM_ALIASES`.

    Refuses with ``error`` (the caller's package's type) dims that are not one of each axis: a name in no alias list
    (its order would be a guess), two names of one axis (``lat`` beside ``row``: which is y cannot be told), an
    axis that is missing or one not asked for (a band dim on a label map). ``where`` names the array."""
    shown = tuple(str(d) for d in dims)
    want = "(" + ", ".join(axes) + ")"
    fix = "da.rename({" + ", ".join(f"...: {a!r}" for a in axes) + "})"
    found: dict[str, list[Hashable]] = {}
    unknown = []
    for d in dims:
        axis = canonical_dim(d)
        if axis is None:
            unknown.append(str(d))
        else:
            found.setdefault(axis, []).append(d)
    if unknown:
        raise error(f"{where} has dims {shown}: {', '.join(map(repr, unknown))} "
                    f"{'is not a name' if len(unknown) == 1 else 'are not names'} of a band, y or x axis (dims are "
                    f"read by name, never by their order); expected {want}, in any order. Accepted names: "
                    f"{accepted_names(axes)}. Fix: {fix}")
    twice = {a: ds for a, ds in found.items() if len(ds) > 1}
    if twice:
        axis, ds = next(iter(twice.items()))
        names = " and ".join(repr(str(d)) for d in ds)
        raise error(f"{where} has dims {shown}: {names} {'both' if len(ds) == 2 else 'all'} name its {axis} axis, so "
                    f"which is {axis} cannot be told; expected one dim each for {want}. Fix: rename them, e.g. {fix}")
    extra = [a for a in found if a not in axes]
    missing = [a for a in axes if a not in found]
    if extra or missing:
        said = [f"{str(found[a][0])!r} names its {a} axis" for a in extra]
        said += [f"no dim names its {' or '.join(missing)} axis"] if missing else []
        hint = f" (a single-band map: da.squeeze({str(found['band'][0])!r}))" if extra == ["band"] else ""
        raise error(f"{where} has dims {shown}: {'; '.join(said)}; expected {want}, read by name in any order. Fix: "
                    f"select or rename its dims{hint}")
    return {a: found[a][0] for a in axes}
