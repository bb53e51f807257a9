"""Command line: ``hsi-engine demo | train | classify | info | import-keras``.

Each subcommand parses its options here and calls one library function; no logic lives in this file.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import re
import shlex
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _at_least(low: int):
    """An argparse type: an integer >= ``low``, else a usage error naming the bound."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {v}")
        return v
    return parse


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="classify the shipped Indian Pines scene with the shipped model")
    p.add_argument("--out", default="hsi-engine-demo", help="output directory (default: %(default)s)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--backend", default="auto", choices=["auto", "eager", "compile", "triton"],
                   help="engine backend (default: %(default)s)")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="engine precision (float32 is exact; the others are opt-in and run the spectral stage in "
                        "that dtype, and the spatial stage too on CUDA and, in bfloat16, on a CPU with AMX-BF16: faster "
                        "on GPUs and on such CPUs)")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, device=args.device, backend=args.backend, precision=args.precision)
    return 0


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0, else a usage error naming the bound."""
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return v


def _fraction(low_included: bool = False):
    """An argparse type: a fraction below 1 and above 0 (or from 0, with ``low_included``), else a usage error
    naming the bounds."""
    bounds = "[0, 1) (1 excluded)" if low_included else "(0, 1) (0 and 1 excluded)"

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a fraction in {bounds}, got {text!r}") from None
        if not (0 <= v < 1 if low_included else 0 < v < 1):
            raise argparse.ArgumentTypeError(f"expected a fraction in {bounds}, got {text}")
        return v
    return parse


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an SSRN with the seed's protocol (or your options)")
    p.add_argument("--dataset", required=True,
                   help="indian_pines | pavia_university | ksc | salinas | PATH to a scene: .mat (+ its _gt.mat), or "
                        ".npz / .h5 with 'cube' (band, y, x), 'labels' (y, x) and optionally 'wavelength' and "
                        "'class_names' (one per class, for the map's legend); or, with --labels, any scene "
                        "'classify' reads (GeoTIFF, ENVI, zarr, NetCDF)")
    p.add_argument("--labels", default=None,
                   help="a one-band label raster (GeoTIFF, ENVI, .npy) on the grid of the --dataset scene: class "
                        "ids 1..K, 0 (or its nodata) unlabelled; mosaic tiles first (e.g. rio merge)")
    p.add_argument("--class-names", default=None, type=lambda v: [n.strip() for n in v.split(",")],
                   help="comma-separated names of the --labels classes 1..K, in order (for the map's legend); a "
                        "name cannot hold a comma here (quotes do not group): use the label raster's legend or "
                        "run_training(class_names=[...]) for such names")
    p.add_argument("--out", required=True, help="model directory to write: new or empty (or, with --overwrite, "
                                                "a model directory to replace)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it is a model directory (never a directory holding other files)")
    p.add_argument("--data-dir", default=None, help="directory holding the scenes (default: $HSI_ENGINE_DATA, "
                                                    "else shared/data beside the hsi-engine checkout; Indian Pines "
                                                    "ships with hsi-engine)")
    p.add_argument("--epochs", type=_at_least(1), default=200, help="training epochs (default: 200, the seed's)")
    p.add_argument("--batch-size", type=_at_least(2), default=16, help="patches per step (default: 16, the seed's)")
    pixels = p.add_mutually_exclusive_group()  # both choose the training pixels: one or the other
    pixels.add_argument("--train-fraction", type=_fraction(), default=None,
                        help="fraction of each class for training (default: the dataset's seed protocol)")
    pixels.add_argument("--per-class", type=_at_least(1), default=None,
                        help="fixed number of training pixels per class (random split only; a class of fewer than 2N "
                        "pixels trains on half of them, with a warning)")
    p.add_argument("--val-fraction", type=_fraction(low_included=True), default=None,
                   help="fraction of each class for validation (default: the dataset's seed protocol); "
                        "train + val must stay below 1")
    p.add_argument("--split", choices=["random", "blocks"], default="random",
                   help="random (default: the paper's stratified random pixels) or blocks (spatially disjoint "
                        "blocks, so test pixels have no training pixel in their patch)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the weights (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--variant", choices=["ssrn", "spc", "spa"], default="ssrn",
                   help="ssrn (default: spectral and spatial blocks), or the paper's ablations spc (spectral blocks "
                        "only) and spa (spatial blocks only)")
    p.add_argument("--patch", type=int, default=7, metavar="P",
                   help="patch side in pixels, odd, 3..31 (default: 7, the paper's; it studies 5, 7, 9 and 11)")
    p.add_argument("--optimizer", choices=["rmsprop", "adamw"], default="rmsprop",
                   help="rmsprop (default, the seed's) or adamw")
    p.add_argument("--lr", type=_positive_float, default=3e-4, help="learning rate (default: 3e-4, the seed's)")
    p.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                   help="learning-rate schedule: constant (default, the seed's) or cosine")
    p.add_argument("--patience", type=_at_least(1), default=None, help="early-stopping patience in epochs")
    p.add_argument("--max-minutes", type=_positive_float, default=None,
                   help="stop after the last epoch that fits this training-time budget (the first epoch always runs; "
                        "recorded in the report)")
    p.add_argument("--class-weight", choices=["none", "balanced"], default="none",
                   help="'balanced': weigh the loss by inverse class frequency (default: none, as the seed)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA (default: float32, as the seed)")
    _add_open_options(p, " of the --dataset scene (with --labels)")


def _cmd_train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ssrn.config import InvalidConfig, SSRNConfig

    from .training import train

    try:  # --patch checked by the network's own rule (on any valid config) before anything is read, and named as
        SSRNConfig(bands=200, classes=16, patch=args.patch)  # typed: its error said 'patch must be ...'
    except InvalidConfig as e:
        raise InvalidConfig(e.field, f"--{e}" if e.field == "patch" else str(e), e.found) from None
    train(dataset=args.dataset, out=args.out, data_dir=args.data_dir, epochs=args.epochs,
          batch_size=args.batch_size, train_fraction=args.train_fraction, val_fraction=args.val_fraction,
          per_class=args.per_class, split=args.split, seed=args.seed, device=args.device, variant=args.variant,
          patch=args.patch, optimizer=args.optimizer, lr=args.lr, schedule=args.schedule, patience=args.patience,
          max_minutes=args.max_minutes, amp=args.amp,
          class_weight=None if args.class_weight == "none" else args.class_weight, overwrite=args.overwrite,
          labels=args.labels, class_names=args.class_names, variable=args.variable, band_axis=args.band_axis,
          command="hsi-engine " + shlex.join(argv))  # its errors are HSIEngineErrors: main() says them
    return 0


def _add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify a scene into a class map (GeoTIFF or zarr)")
    p.add_argument("scene", help="zarr store, NetCDF, GeoTIFF, ENVI .hdr, HDF5 (.h5), MATLAB .mat or .npy scene")
    _add_open_options(p)
    p.add_argument("--model", required=True, help="model directory (weights.safetensors + model.json)")
    p.add_argument("--out", required=True, help="OUT.tif (Cloud-Optimised GeoTIFF) or OUT.zarr")
    p.add_argument("--tile", type=_at_least(1), default=None,
                   help="output tile side in pixels (default 128 on CPU, 64 above 256 bands, 512 on CUDA; any size "
                        "gives the same map; .zarr, --resume and --workers runs round it up to a square of a "
                        "multiple of 16); memory grows with it: lower it (and --readers) where memory is short")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--backend", default="auto", choices=["auto", "eager", "compile", "triton"],
                   help="auto (default: the fastest measured: triton for a bfloat16/float16 run on CUDA, eager "
                        "otherwise), eager (plain torch), compile (torch.compile; eager if it cannot compile), or "
                        "triton (the fused CUDA kernel; eager, with one warning, where there is no CUDA or Triton); "
                        "all compute the same network")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="float32 (default: the patch-mode network's map, exactly), or bfloat16 / float16 (opt-in, "
                        "approximate: a few pixels change class; faster on GPUs, bfloat16 also on CPUs with "
                        "AMX-BF16; slower elsewhere)")
    p.add_argument("--spatial-precision", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="the spatial stage's precision: auto (the --precision given on CUDA, and for a "
                        "bfloat16 run on a CPU with AMX-BF16; float32 elsewhere), float32, or the --precision given")
    p.add_argument("--probabilities", action="store_true", help="also write per-class probabilities")
    p.add_argument("--probabilities-dtype", default=None, choices=["float16", "float32"],
                   help="their storage (implies --probabilities; default float16, which rounds by up to 2.4e-4: "
                        "near-tied classes can then read as equal; float32 keeps the argmax the class map's)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output hsi-engine wrote, never another file (with --resume: finish an "
                        "interrupted run with the same settings if there is one, else replace the existing output)")
    p.add_argument("--nodata", type=float, default=None,
                   help="input value marking missing pixels; NaN/inf pixels are then masked to class 0 too")
    p.add_argument("--workers", type=_at_least(1), default=None, help="run on a local dask cluster of N workers")
    p.add_argument("--scheduler", default=None, help="address of an existing dask scheduler to join")
    p.add_argument("--resume", action="store_true", help="finish an interrupted run (.zarr outputs always record finished tiles; for .tif give --resume from the first run)")
    p.add_argument("--readers", type=_at_least(1), default=None,
                   help="reader threads preparing tiles ahead of the compute (default 2 on CPU, up to 8 on CUDA); "
                        "each holds a tile window in memory. No effect with --workers or --scheduler: each worker "
                        "reads the tile it computes")
    p.add_argument("--cache-blocks", type=_at_least(0), default=None,
                   help="decoded chunks of the scene kept for neighbouring tiles (default: what the tile "
                        "needs on CUDA, 0 on CPU; 0 decodes each chunk once per tile that touches it)")
    p.add_argument("--decoders", type=_at_least(0), default=None,
                   help="threads decoding the cached chunks of one tile at once; they need the block cache "
                        "(default: one per core on CUDA, 0 on CPU: the reader threads decode)")


def _said(text: str) -> None:
    """An error line on stderr; a stderr that cannot take it (``2>/dev/full``, a pipe closed early) leaves the exit
    status 2 (the line raised OSError out of main: exit 1, a crash's status)."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=sys.stderr)


def _warnings_are_errors(category: type[Warning], message: str) -> bool:
    """Whether the warning filters in force make a ``category`` warning reading ``message`` an error."""
    for action, msg, cat, _module, _lineno in warnings.filters:
        if issubclass(category, cat) and (msg is None or msg.match(message)):
            return action == "error"
    return False


def _cmd_classify(args: argparse.Namespace, on_written: Callable[[Path], None] | None = None) -> int:
    from .allocator import reuse_large_buffers
    from .api import classify_to_file
    from .errors import UnnormalisedInputWarning

    if args.spatial_precision not in ("auto", "float32", args.precision):
        print(f"hsi-engine classify: error: --spatial-precision {args.spatial_precision} needs --precision "
              f"{args.spatial_precision} (the spatial stage never runs below the spectral stage's precision, so "
              "a float32 run stays exact): pass auto or float32", file=sys.stderr)
        return 2
    reuse_large_buffers()  # this process only reads, classifies and writes: chunk-sized decode buffers are reused
    strict = _warnings_are_errors(UnnormalisedInputWarning, "the scene's values lie a median")  # -W error
    with warnings.catch_warnings():
        # a meaningless map must not pass for a result where only the exit status is read: an error (exit 2)
        warnings.simplefilter("error", UnnormalisedInputWarning)
        # ... where the cause is plain (a power of ten, 30x, a standardised scene); a sample merely far from the
        # training data (4+ standard deviations) may be a cloud or snow over the scene's centre: a warning, unless
        # the user made warnings errors (-W error, PYTHONWARNINGS=error): they asked for it to stop the run
        if not strict:
            warnings.filterwarnings("default", message="the scene's values lie a median",
                                    category=UnnormalisedInputWarning)
            warnings.filterwarnings("default", message="the scene's values look about",
                                    category=UnnormalisedInputWarning)
        classify_to_file(_scene_arg(args), args.model, args.out, tile=args.tile, device=args.device,
                         backend=args.backend, precision=args.precision,
                         probabilities=args.probabilities_dtype or args.probabilities,
                         overwrite=args.overwrite, nodata=args.nodata, workers=args.workers,
                         scheduler=args.scheduler, resume=args.resume, readers=args.readers,
                         cache_blocks=args.cache_blocks, decoders=args.decoders,
                         spatial_precision=args.spatial_precision, on_written=on_written)
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="shape, bands, dtype, chunks, CRS and size on disk of a scene; what a model "
                                    "directory holds, with the model digest its class maps record; or what made a "
                                    "class map (or an interrupted run's partial store)")
    p.add_argument("scene", help="a scene, a model directory (model.json + weights.safetensors), or a class map")
    _add_open_options(p)


def _cmd_info(args: argparse.Namespace) -> int:
    from .io import scene_info
    from .map_info import class_map_attrs, map_info
    from .model_info import is_model_dir, model_info

    if Path(args.scene).name == "model.json" and is_model_dir(Path(args.scene).parent):
        args.scene = str(Path(args.scene).parent)  # the model directory's own file: the model
    given = [o for o, v in (("--variable", args.variable), ("--band-axis", args.band_axis)) if v is not None]
    scene_only = (f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to scenes; leave "
                  f"{'them' if len(given) > 1 else 'it'} out")
    if Path(args.scene).suffix.lower() in (".pt", ".pth", ".pkl", ".pickle", ".ckpt") and Path(args.scene).is_file():
        model_info(args.scene)  # a model saved another way: the model reader's refusal (a pickle is never read)
    if is_model_dir(args.scene):
        if given:
            print(f"hsi-engine info: error: {args.scene} is a model directory: {scene_only}", file=sys.stderr)
            return 2
        text = model_info(args.scene)
    elif class_map_attrs(args.scene) is not None:  # a map (or partial run) of ours: what made it, not its pixels
        if given:
            print(f"hsi-engine info: error: {args.scene} is a class map hsi-engine wrote: {scene_only}",
                  file=sys.stderr)
            return 2
        text = map_info(args.scene)
    else:
        text = scene_info(args.scene, variable=args.variable, band_axis=args.band_axis)
    for given in {str(args.scene), os.path.abspath(args.scene)}:  # a newline in the path forged a "key  value" line
        if given != one_line(given):
            text = text.replace(given, one_line(given))
    if sys.stdout is None:  # `>&-`: print() would write nothing and the command say it had
        print("hsi-engine info: error: standard output is closed; nothing to write the description to",
              file=sys.stderr)
        return 2
    try:
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        try:
            text.encode(encoding)
        except UnicodeEncodeError:  # a path in ä to an ASCII stdout: escaped, as the other commands' messages are
            text = text.encode(encoding, "backslashreplace").decode(encoding)
        print(text, flush=True)
    except OSError as e:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not raise again
        if isinstance(e, BrokenPipeError):  # `hsi-engine info x | head`: the reader left; not an error of ours
            return 141  # as a shell reports a process ended by SIGPIPE
        print(f"hsi-engine info: error: cannot write to standard output ({e.strerror or e})", file=sys.stderr)
        return 2  # (`> file` on a full disk)
    return 0


def _add_open_options(p: argparse.ArgumentParser, of: str = "") -> None:
    p.add_argument("--variable", default=None,
                   help=f"the array to read from a NetCDF / zarr / HDF5 / MATLAB file holding several cubes{of}")
    p.add_argument("--band-axis", type=int, choices=[0, 1, 2], default=None,
                   help=f"where the bands are in a bare array{of} (.npy, .mat, HDF5/zarr without dims): 0 for "
                        "(band, y, x), 1 for (y, band, x) (PRISMA's HDF5 cubes), 2 for (y, x, band); default: "
                        "0 or 2, whichever leaves two equal sides (a square scene); else 2 for .npy and .mat, and "
                        "a guess with a warning for the others")


def _scene_arg(args: argparse.Namespace):
    """The scene path, or the scene opened with --variable / --band-axis when either is given."""
    if args.variable is None and args.band_axis is None:
        return args.scene
    from .io import open_scene

    return open_scene(args.scene, variable=args.variable, band_axis=args.band_axis)


def _add_import_keras(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-keras", help="convert a seed Keras SSRN .hdf5 into a model directory")
    p.add_argument("hdf5", help="the Keras .hdf5 file (read with h5py; no TensorFlow needed)")
    p.add_argument("--out", required=True, help="model directory to write: new or empty (or, with --overwrite, "
                                                "a model directory to replace)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when it is a model directory (never a directory holding other files)")
    p.add_argument("--dataset", default=None,
                   help="record this dataset's preprocessing (per-band mean/std), class names, palette; without "
                        "it the model expects scenes normalised already")
    p.add_argument("--data-dir", default=None, help="directory holding the --dataset scene (default: "
                                                    "$HSI_ENGINE_DATA, else shared/data beside the hsi-engine "
                                                    "checkout)")


def _cmd_import_keras(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ssrn.keras import import_keras_to_dir

    import_keras_to_dir(args.hdf5, args.out, dataset=args.dataset, data_dir=args.data_dir,
                        overwrite=args.overwrite, command="hsi-engine " + shlex.join(argv))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsi-engine", description=(__doc__ or "hsi-engine").splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="warnings and errors only (no INFO lines: a cron job's successful run prints nothing)")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_train, _add_classify, _add_info, _add_import_keras):
        add(sub)
    for p in sub.choices.values():  # `hsi-engine classify ... -v` too (SUPPRESS: the top-level one stays)
        p.add_argument("-v", dest="verbose", action="store_true", default=argparse.SUPPRESS,  # (no --verbose: it
                       help="debug logging")  # would make --v, a prefix of --variable, ambiguous)
        p.add_argument("-q", dest="quiet", action="store_true", default=argparse.SUPPRESS,
                       help="warnings and errors only")
    parser.commands = sub.choices  # type: ignore[attr-defined]
    return parser


def _unrecognised(extra: Sequence[str], command: argparse.ArgumentParser) -> str:
    """argparse's 'unrecognized arguments' message, with the closest option of the command for a typo."""
    import difflib

    options = [o for a in command._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for arg in extra:
        word = arg.split("=", 1)[0]
        close = difflib.get_close_matches(word, options, n=1, cutoff=0.7) if arg.startswith("--") else []
        if word == "--verbose":  # (the command's own is -v only: --verbose would make --v ambiguous)
            close = ["-v (or hsi-engine --verbose COMMAND ...)"]
        if close:
            hints.append(f"{arg}: did you mean {close[0]}?")
    return f"unrecognized arguments: {' '.join(extra)}" + (f" ({'; '.join(hints)})" if hints else "")


_PATH_ARGS = {"scene", "out", "model", "data_dir", "labels", "dataset", "hdf5", "keras", "weights"}


def _negative_values_joined(argv: list[str]) -> list[str]:
    """``--nodata -3.4e38`` as ``--nodata=-3.4e38``: argparse takes a negative number in exponent form for an
    option and refused it ("expected one argument"), though -3.4028235e38 is float32's usual nodata value."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--nodata" and arg.startswith("-"):
            try:
                float(arg.replace(",", "."))
            except ValueError:
                out.append(arg)
                continue
            out[-1] = f"--nodata={arg}"
            continue
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import HSIEngineError
    from .logs import affine_mul_quiet

    argv = _negative_values_joined(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # the command's usage and name, as for its other argument errors (the top level's said 'hsi-engine')
        command = parser.commands[args.command]
        command.error(_unrecognised(extra, command))
    # '~' the shell left as typed (quoted, or --out=~/x): the user's home, as the shell would have made it (a
    # literal './~' directory took the map, and the log line read as if it were in the home directory)
    for name, value in vars(args).items():
        if isinstance(value, str) and value.startswith("~") and name in _PATH_ARGS:
            expanded = os.path.expanduser(value)
            if expanded.startswith("~"):  # no HOME and no passwd entry: a directory literally named '~' is a trap
                print(f"hsi-engine {args.command}: error: {one_line(value)} names the home directory, but this user "
                      "has none (HOME is unset): give the path in full", file=sys.stderr)
                return 2
            setattr(args, name, expanded)
        if value == "" and name in _PATH_ARGS:  # an unset shell variable ("$OUT"): not the current directory
            shown = name if name in ("scene", "hdf5", "keras", "weights") else f"--{name.replace('_', '-')}"
            print(f"hsi-engine {args.command}: error: argument {shown}: an empty path (an unset variable?); expected "
                  "a file or directory name", file=sys.stderr)
            return 2
    # other libraries' INFO/DEBUG (rasterio echoes every GDAL message) stay out; this project's own logs come through
    # a pipeline's log (stderr not a terminal) gets timestamps: when a run stalled, how long a tile took
    stamp = "" if sys.stderr is not None and sys.stderr.isatty() else "%(asctime)s "
    log_handler = logging.StreamHandler()  # (a caller's own logging setup is kept: basicConfig then does nothing)
    log_handler.setFormatter(_CliFormatter(f"{stamp}%(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root_level = root.level
    logging.basicConfig(level=logging.WARNING, handlers=[log_handler])
    ours = log_handler in root.handlers  # taken off again on return: a caller's later basicConfig then works
    own = {name: logging.getLogger(name) for name in ("hsi_engine", "ssrn", "kernels")}
    levels = {name: lg.level for name, lg in own.items()}
    level = logging.DEBUG if args.verbose else logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    for lg in own.values():
        lg.setLevel(level)
    captured = getattr(logging, "_warnings_showwarning", None) is not None  # a caller's own captureWarnings(True)
    logging.captureWarnings(True)  # one "WARNING py.warnings: ..." line each, like the log, not a source line
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    # SIGTERM (timeout, batch schedulers) unwinds like Ctrl-C, so outputs are committed whole or not at all
    handlers = _handlers()
    previous = {s: signal.signal(s, h) for s, h in handlers.items()}
    affine_mul = affine_mul_quiet()  # rioxarray's use of affine's deprecated `*`: -W error failed every run
    affine_mul.__enter__()
    try:
        if args.command == "demo":
            return _cmd_demo(args)
        if args.command == "train":
            return _cmd_train(args, argv)
        if args.command == "classify":  # once the map is in place, a signal no longer makes the run "interrupted"
            return _cmd_classify(args, on_written=lambda path: [h.finish() for h in handlers.values()])
        if args.command == "info":
            return _cmd_info(args)
        if args.command == "import-keras":
            return _cmd_import_keras(args, argv)
    except (HSIEngineError, FileNotFoundError, FileExistsError, PermissionError) as e:
        _said(f"hsi-engine {args.command}: error: {one_line(cli_words(str(e)))}")
        return 2
    except Warning as e:  # one of ours raised by -W error / PYTHONWARNINGS=error: said as the error it was made
        _said(f"hsi-engine {args.command}: error: {one_line(cli_words(str(e)))} ({type(e).__name__}, raised as an "
              "error by -W error / PYTHONWARNINGS)")
        return 2
    except ModuleNotFoundError as e:
        import importlib.util

        top = (e.name or "").split(".")[0]
        if not top or top in ("hsi_engine", "ssrn", "kernels") or any(w in str(e) for w in _OUT_OF_MEMORY) or \
                (top != e.name and importlib.util.find_spec(top) is not None):  # installed, lacking a part: a bug
            raise
        _said(f"hsi-engine {args.command}: error: the package {top!r} is missing ({one_line(str(e))}); it is one of "
              f"hsi-engine's dependencies: reinstall them (pip install 'hsi-engine', or pip install -e . in a "
              f"checkout) or pip install {top}")
        return 2
    except (MemoryError, RuntimeError, ImportError) as e:
        # torch's CPU allocator raises RuntimeError ("DefaultCPUAllocator: can't allocate memory"), Python
        # MemoryError; past an address-space limit (ulimit -v) threads and shared libraries fail to start or map too
        text = str(e)
        if not isinstance(e, MemoryError) and (not any(w in text for w in _OUT_OF_MEMORY)
                                               or "primitive descriptor" in text):  # (oneDNN: unsupported, not OOM)
            raise
        said = (text.splitlines() or [type(e).__name__])[0][:200]
        less = {"classify": "use less: a smaller --tile, fewer --readers", "train": "use less: a smaller "
                "--batch-size", "demo": "use less: --device cpu with fewer threads (OMP_NUM_THREADS)"}
        threads = "can't start new thread" in text  # (ulimit -u as well as ulimit -v)
        _said(f"hsi-engine {args.command}: error: out of memory{' or threads' if threads else ''} "
              f"({one_line(said)}); {less.get(args.command, 'use less memory')} (or give the process more memory: "
              f"ulimit -v{'; or more threads: ulimit -u, or fewer of them: OMP_NUM_THREADS=1' if threads else ''})")
        return 2
    except OSError as e:
        fixes = {errno.ENAMETOOLONG: "use a shorter path", errno.ELOOP: "use a shorter path",
                 errno.EROFS: "the file system is read-only: write elsewhere, or point TMPDIR (and "
                              "TORCHINDUCTOR_CACHE_DIR, for torch.compile's cache) at a writable directory",
                 errno.ENOSPC: "the file system is full: free space there, or write elsewhere",
                 errno.EDQUOT: "the disk quota is used up: free space, or write elsewhere",
                 errno.EFBIG: "a file grew past the file-size limit (ulimit -f) or what the file system holds: "
                              "raise the limit, or write elsewhere",
                 errno.EMFILE: "this process may open no more files: raise the limit (ulimit -n), or use fewer "
                               "--readers / --workers",
                 errno.ENFILE: "the system may open no more files: close other programs' files, or use fewer "
                               "--readers / --workers"}
        if e.errno not in fixes:
            raise
        where = f": {one_line(str(e.filename))}" if e.filename is not None else ""
        _said(f"hsi-engine {args.command}: error: {e.strerror}{where}; {fixes[e.errno]}")
        return 2
    except KeyboardInterrupt:
        if any(h.finished for h in handlers.values()):
            return 0  # the map was in place; the run's own warning said what clean-up the next run does
        with contextlib.suppress(OSError):  # a hang-up may have taken the terminal with it
            print(f"hsi-engine {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        done = any(h.finished for h in handlers.values())
        for s, handler in previous.items():
            if done and isinstance(handler, _Interrupt):
                handler.finish()  # the command's own (run()): a signal while main returns changes nothing
            signal.signal(s, handler)
        affine_mul.__exit__(None, None, None)
        warnings.formatwarning = formatwarning
        logging.captureWarnings(captured)
        for name, lg in own.items():
            lg.setLevel(levels[name])
        if ours:
            root.removeHandler(log_handler)
            root.setLevel(root_level)
    raise AssertionError(f"unhandled command {args.command}")


# what a failure for want of memory says: torch's allocator, CUDA, and past an address-space limit (ulimit -v)
# a thread that cannot start or a shared library that cannot be mapped
_OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "can't start new thread", "failed to map segment",
                  "Cannot allocate memory", "could not create a primitive")  # (the last: oneDNN's)


_OPTION_WORDS: list[tuple[re.Pattern, Any]] = [  # the library's messages name both spellings, "resume=True
    # (--resume)": a shell user reads one
    (re.compile(r"\b[a-z_]+=[A-Za-z0-9_.]* \((--[a-z-]+(?: [A-Z]+)?)(?: on the command line)?\)"), r"\1"),
    (re.compile(r"\b[a-z_]+= \((--[a-z-]+), ([^)]*)\)"), r"\1 (\2)"),
    (re.compile(r"\b[a-z_]+=[A-Z]+ \((--[a-z-]+ [A-Z]+); for NaN: [a-z_]+=float\('nan'\), (--[a-z-]+ nan)\)"),
     r"\1 (for NaN: \2)"),
    # the value given both ways: "nodata=-9999 (--nodata -9999)"
    (re.compile(r"\b[a-z_]+=(\S+) \((--[a-z-]+) \1\)"), r"\2 \1"),
    # the shell's spelling first: "pass --overwrite (overwrite=True)"
    (re.compile(r"(--[a-z][a-z-]*(?: [A-Z]+)?) \([a-z_]+=[^()\s]*\)"), r"\1"),
]


def _given_options(match: re.Match) -> str:
    """``band_axis=0 and variable='x' (--variable / --band-axis)`` as the options were typed: ``--band-axis 0 and
    --variable x``; as it was where one is not among the options named."""
    import ast

    named = set(match.group(2).split(" / "))
    said = []
    for item in match.group(1).split(" and "):
        key, _, value = item.partition("=")
        option = "--" + key.replace("_", "-")
        if option not in named:
            return match.group(0)
        try:
            value = str(ast.literal_eval(value))
        except (ValueError, SyntaxError):
            pass
        said.append(f"{option} {shlex.quote(value)}")
    return " and ".join(said)


_GIVEN_VALUE = r"(?:'[^']*'|\"[^\"]*\"|[^\s()'\"]+)"  # a repr'd text (spaces and all), or a number
_GIVEN_OPTIONS = re.compile(rf"\b([a-z_]+={_GIVEN_VALUE}(?: and [a-z_]+={_GIVEN_VALUE})*) "
                            r"\((--[a-z-]+(?: / --[a-z-]+)+)\)")


def cli_words(message: str) -> str:
    """A library message as the command line says it: ``pass resume=True (--resume)`` -> ``pass --resume``,
    ``pass --overwrite (overwrite=True)`` -> ``pass --overwrite``, ``band_axis=0 (--variable / --band-axis)`` ->
    ``--band-axis 0``."""
    for pattern, words in _OPTION_WORDS:
        message = pattern.sub(words, message)
    return _GIVEN_OPTIONS.sub(_given_options, message)


def one_line(text: str) -> str:
    """``text`` on one line: a newline or carriage return (in a path: ``$'a\\nb.tif'``) shown escaped, so an error is
    the one line the exit status promises and a path cannot forge a log line of its own."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class _CliFormatter(logging.Formatter):
    """Log lines with options spelled for the shell (:func:`cli_words`), one line each (:func:`one_line`; a
    traceback a record carries keeps its lines)."""

    def format(self, record: logging.LogRecord) -> str:
        text = cli_words(super().format(record))
        head, sep, tail = text.partition("\nTraceback (most recent call last):")
        return one_line(head) + sep + tail


# a SIGTERM burst is one stop; each Ctrl-C counts; SIGHUP (a closed terminal or SSH session) stops as SIGTERM does
_GRACE_S = {signal.SIGTERM: 10.0, signal.SIGINT: 0.0, **({signal.SIGHUP: 10.0} if hasattr(signal, "SIGHUP") else {})}


class _Interrupt:
    """SIGTERM and Ctrl-C unwind the run (``KeyboardInterrupt``). Repeats within ``grace_s`` of the first are
    ignored, so the rest of a SIGTERM burst (schedulers and ``kill`` loops send several) cannot cut short the
    unwinding the first one started (committing, keeping or removing files); a signal after that stops the run
    again (the first may have been swallowed). A signal that arrives inside a log call is delivered again 50 ms
    later: raised there it is lost when C code made the call (GDAL's error handler through rasterio prints
    'Exception ignored' and the run went on to exit 0)."""

    RETRY_S = 0.05

    def __init__(self, grace_s: float = 0.0) -> None:
        self.grace_s = grace_s
        self.first: float | None = None
        self.finished = False

    def finish(self) -> None:
        """The run's output is complete: what is left (releasing the lock, returning) is not to be interrupted."""
        self.finished = True

    def __call__(self, signum: int, frame: object) -> None:
        if self.finished:
            return
        if _in_logging(frame):
            import threading

            threading.Timer(self.RETRY_S, os.kill, (os.getpid(), signum)).start()
            return
        now = time.monotonic()
        if self.first is not None and now - self.first < self.grace_s:
            return
        self.first = now
        raise KeyboardInterrupt(f"signal {signum}")


def _handlers() -> dict[int, _Interrupt]:
    """A fresh :class:`_Interrupt` for SIGTERM, SIGINT and SIGHUP, in the main thread only, and not for a signal the
    process was started ignoring (``cmd &`` in a script, ``nohup``), nor over a handler set from C (an embedding
    application's, which reads as None and could not be put back): those stay the caller's."""
    if not _main_thread():
        return {}
    return {s: _Interrupt(grace) for s, grace in _GRACE_S.items() if signal.getsignal(s) not in (signal.SIG_IGN, None)}


def _in_logging(frame: object) -> bool:
    """Whether the interrupted code runs inside the logging module (a log call, perhaps made from C)."""
    while frame is not None:
        if getattr(frame, "f_globals", {}).get("__name__") == "logging":
            return True
        frame = getattr(frame, "f_back", None)
    return False


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001 - warnings' hook
    return f"{category.__name__}: {one_line(str(message))}"


def run() -> None:
    """The ``hsi-engine`` command: :func:`main`, then exit with its status. Signals that arrive once main is done
    (the rest of a SIGTERM burst, one during interpreter shutdown) change nothing: exit 0 after "wrote ...", 130
    after "interrupted" (the default handler, back after main, ended such a process with 143)."""
    status = _run_main()
    if status == 130:
        # interrupted: zarr reads the interruption left pending in zarr's event loop printed dozens of 'Task was
        # destroyed but it is pending' / 'Event loop is closed' tracebacks while the interpreter tore down; the run
        # has already kept or removed its files and closed its cluster, so nothing at exit is left to do
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def _run_main() -> int:
    """:func:`main`'s status, with signals that arrive once it is done ignored."""
    status = 130
    handlers = _handlers()  # until main installs its own, and again after it (finished if main's were)
    for s, h in handlers.items():
        signal.signal(s, h)
    try:
        status = main()
    except KeyboardInterrupt:  # in main's last moments, after its own handling
        if any(h.finished for h in handlers.values()):
            status = 0
    finally:
        for s in handlers:
            signal.signal(s, signal.SIG_IGN)
    return status


if __name__ == "__main__":
    run()
