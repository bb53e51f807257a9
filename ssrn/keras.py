"""Import the seed's released Keras SSRN models (``zilongzhong/SSRN``, ``models/*.hdf5``) without TensorFlow.

The ``.hdf5`` files are Keras 2 whole-model files: the graph is JSON in the file attribute
``model_config`` and the weights sit under ``model_weights/<layer>/<layer>/<name>:0``. This module reads
both with h5py only (nothing is unpickled or executed), recognises the seed's ``build_resnet_8`` graph
and refuses any other graph with a :class:`KerasImportError` naming the first layer it did not expect.

Recognised graph (Keras layout, channels-last; ``B`` bands, ``P x P`` patch, ``R = (B - 7) // 2 + 1``)::

    Input (P, P, B, 1)
    Conv3D 24 k(1,1,7) stride (1,1,2) valid -> BN -> relu                        stem
    n x [ [BN -> relu ->] Conv3D k(1,1,7) same -> BN -> relu -> Conv3D same ]   spectral blocks, added to the
        + identity                                                              block input
    m x [BN -> relu]                                                            stage norms (the seed has 2)
    Conv3D 128 k(1,1,R) valid -> BN -> relu -> Reshape (P, P, 128, 1)          full-band reduction
    Conv3D 24 k(3,3,128) valid -> BN -> relu                                    spatial stem
    n x [ [BN -> relu ->] Conv3D k(3,3,1) same -> BN -> relu -> Conv3D same ]   spatial blocks, added to the
        + identity | Conv3D k(1,1,1) projection of the block input
    m x [BN -> relu]
    AveragePooling3D (P-2, P-2, 1) -> Flatten -> Dropout -> Dense K softmax

Weight mapping into :class:`ssrn.model.SSRN` (``forward`` takes ``(N, bands, y, x)``; Keras rows are the
scene's y, columns its x: the seed cuts ``matrix[rows, cols, bands]`` from the ``(rows, cols, bands)`` scene):

* spectral conv ``(1, 1, k, in, out)`` -> ``Conv2d`` weight ``(out, in, k, 1)`` (band axis is dim 2);
* spatial stem ``(3, 3, 128, 1, out)`` -> ``Conv2d(128 -> out, 3x3)`` with ``w[o, c, i, j] = k[i, j, c, 0, o]``
  (the reshape makes the 128 features the depth axis that the kernel spans completely, valid);
* spatial conv ``(3, 3, 1, in, out)`` -> ``w[o, c, i, j] = k[i, j, 0, c, o]``; projection ``(1, 1, 1, in, out)``
  -> ``(out, in, 1, 1)`` (its stride along the size-1 depth axis changes nothing);
* BatchNormalization gamma / beta / moving_mean / moving_variance -> weight / bias / running_mean / running_var;
* Dense kernel ``(24, K)`` -> ``Linear`` weight ``(K, 24)``; the softmax is dropped (``forward`` returns
  logits; the argmax is unchanged).

The seed's preprocessing (recorded by :func:`import_keras_to_dir`): per-band standardisation over the whole
scene with ``sklearn.preprocessing.scale`` on the ``(pixels, bands)`` matrix (population std, ``ddof=0``),
then zero padding of ``patch // 2`` pixels at the scene border.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import CheckpointError, file_sha256
from .config import SSRNConfig
from .errors import first_line, reduce_not_found
from .model import SSRN, filled_model

__all__ = ["KerasImportError", "import_keras_to_dir", "load_keras", "parse_keras_graph", "read_keras_config"]

log = logging.getLogger("ssrn.keras")


class KerasImportError(CheckpointError):
    """A Keras file that is not a seed SSRN graph this importer understands (or is not a Keras model file).

    A ``ValueError`` (through :class:`~ssrn.checkpoint.CheckpointError`, so ``hsi-engine import-keras`` reports
    it as an error message with exit status 2).
    """


class KerasFileNotFoundError(KerasImportError, FileNotFoundError):
    """A Keras model path that is not there, or a directory (a ``FileNotFoundError`` too)."""

    __reduce__ = reduce_not_found  # (crosses back from a dask worker as itself)


# --------------------------------------------------------------------------------------------------
# reading the file

def _attr_str(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, bytearray, np.bytes_)) else str(v)


def read_keras_config(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``model_config`` JSON of a Keras 2 ``.hdf5`` model file."""
    import h5py

    path = Path(path)
    if path.is_dir():
        raise KerasFileNotFoundError(f"{path} is a directory; expected the Keras model file itself (e.g. "
                                     f"{path / 'Indian_best_RES_3D_SS4_10_1.hdf5'})")
    if not path.is_file():
        raise KerasFileNotFoundError(f"Keras model file {path} not found")
    try:
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                hint = (" It holds only weights (model.save_weights); save the whole model with model.save(...)."
                        if "layer_names" in f.attrs else "")
                raise KerasImportError(f"{path} has no 'model_config' attribute: not a Keras whole-model "
                                       f"file.{hint}")
            raw = _attr_str(f.attrs["model_config"])
    except (OSError, RuntimeError, KeyError, AttributeError) as e:  # h5py's for damaged metadata too
        raise KerasImportError(f"{path} is not a readable HDF5 file ({first_line(e)})") from None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise KerasImportError(f"{path}: model_config is not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or "config" not in cfg:
        raise KerasImportError(f"{path}: model_config has no 'config' entry")
    return cfg


# --------------------------------------------------------------------------------------------------
# the graph

@dataclass
class _Layer:
    name: str
    cls: str
    config: dict[str, Any]
    inbound: list[str]
    consumers: list[str] = field(default_factory=list)


@dataclass
class KerasGraph:
    """What the importer recognised: the inferred config and, per SSRN parameter group, the Keras layer."""

    config: SSRNConfig
    # SSRN module prefix ("stem", "spectral_blocks.0.conv1", ...) -> (Keras layer name, kind)
    mapping: dict[str, tuple[str, str]]


class _Walker:
    """Follows the Keras graph from the input along the data flow, checking each layer against the pattern."""

    def __init__(self, model_cfg: dict[str, Any]) -> None:
        cls = model_cfg.get("class_name")
        if cls not in ("Model", "Functional"):
            raise KerasImportError(f"model_config describes a {cls!r}; expected a functional 'Model' "
                                   "(the seed's build_resnet_8)")
        layers = model_cfg["config"].get("layers")
        if not isinstance(layers, list) or not layers:
            raise KerasImportError("model_config has no layers")
        self.layers: dict[str, _Layer] = {}
        self.order: list[str] = []
        for spec in layers:
            name = spec.get("name") or spec.get("config", {}).get("name")
            inbound: list[str] = []
            nodes = spec.get("inbound_nodes", [])
            if len(nodes) > 1:
                raise KerasImportError(f"layer {name!r} ({spec.get('class_name')}) is called {len(nodes)} times "
                                       "(shared layer); the seed's graph calls every layer once")
            for node in nodes:
                if not isinstance(node, list):
                    raise KerasImportError(f"layer {name!r}: inbound_nodes in an unknown format (Keras 3?); "
                                           "expected the Keras 2 form [[['layer', 0, 0, {}], ...]]")
                for t in node:
                    inbound.append(t[0])
            self.layers[name] = _Layer(name, spec.get("class_name", "?"), spec.get("config", {}), inbound)
            self.order.append(name)
        for lay in self.layers.values():
            for src in lay.inbound:
                if src not in self.layers:
                    raise KerasImportError(f"layer {lay.name!r} ({lay.cls}) takes input from unknown layer {src!r}")
                self.layers[src].consumers.append(lay.name)
        inputs = [i[0] for i in model_cfg["config"].get("input_layers", [])]
        outputs = [o[0] for o in model_cfg["config"].get("output_layers", [])]
        if len(inputs) != 1 or len(outputs) != 1:
            raise KerasImportError(f"the graph has inputs {inputs} and outputs {outputs}; expected one of each")
        self.input, self.output = inputs[0], outputs[0]
        self.visited: list[str] = []

    # ---- helpers
    def describe(self, name: str) -> str:
        lay = self.layers[name]
        return f"layer {name!r} ({lay.cls})"

    def fail(self, name: str, expected: str, found: str = "") -> None:
        found = f"; found {found}" if found else ""
        raise KerasImportError(f"unexpected {self.describe(name)}: expected {expected}{found}. This importer "
                               "understands the seed's build_resnet_8 SSRN graph only")

    def only_consumer(self, name: str, expected: str) -> str:
        cons = self.layers[name].consumers
        if len(cons) != 1:
            what = ", ".join(f"{c!r} ({self.layers[c].cls})" for c in cons) or "nothing"
            raise KerasImportError(f"unexpected fan-out after {self.describe(name)}: it feeds {what}; expected "
                                   f"exactly one {expected}")
        return cons[0]

    def take(self, name: str, cls: str | tuple[str, ...], expected: str) -> _Layer:
        lay = self.layers[name]
        classes = (cls,) if isinstance(cls, str) else cls
        if lay.cls not in classes:
            self.fail(name, expected)
        self.visited.append(name)
        return lay

    def conv(self, name: str, expected: str, *, kernel: tuple[int | None, ...], padding: str,
             strides: tuple[int | None, ...] | None = (1, 1, 1), filters: int | None = None) -> _Layer:
        lay = self.take(name, "Conv3D", expected)
        c = lay.config
        k = tuple(c.get("kernel_size", ()))
        s = tuple(c.get("strides", (1, 1, 1)))
        dil = tuple(c.get("dilation_rate", (1, 1, 1)))
        if c.get("data_format", "channels_last") != "channels_last":
            self.fail(name, f"{expected} with data_format channels_last", f"{c.get('data_format')!r}")
        if len(k) != 3 or any(want is not None and got != want for got, want in zip(k, kernel)):
            self.fail(name, f"{expected} with kernel {tuple('*' if x is None else x for x in kernel)}",
                      f"kernel {k}")
        if c.get("padding") != padding:
            self.fail(name, f"{expected} with padding {padding!r}", f"padding {c.get('padding')!r}")
        if strides is not None and any(want is not None and got != want for got, want in zip(s, strides)):
            self.fail(name, f"{expected} with strides {tuple('*' if x is None else x for x in strides)}",
                      f"strides {s}")
        if any(d != 1 for d in dil):
            self.fail(name, f"{expected} without dilation", f"dilation_rate {dil}")
        if c.get("activation", "linear") != "linear":
            self.fail(name, f"{expected} with a linear activation", f"activation {c.get('activation')!r}")
        if filters is not None and c.get("filters") != filters:
            self.fail(name, f"{expected} with {filters} filters", f"{c.get('filters')} filters")
        return lay

    def bn(self, name: str, expected: str = "BatchNormalization") -> _Layer:
        lay = self.take(name, "BatchNormalization", expected)
        axis = lay.config.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if axis not in (-1, 4):
            self.fail(name, f"{expected} over the channel axis (4 / -1)", f"axis {axis}")
        return lay

    def relu(self, name: str, expected: str = "Activation relu") -> _Layer:
        lay = self.layers[name]
        if lay.cls == "Activation" and lay.config.get("activation") != "relu":
            self.fail(name, expected, f"activation {lay.config.get('activation')!r}")
        return self.take(name, "Activation", expected)


def _parse_stage_block(w: _Walker, x: str, *, stage: str, kernel: tuple[int, int, int], width: int,
                       first: bool, mapping: dict[str, tuple[str, str]], prefix: str,
                       eps: list[float], bias: list[bool]) -> tuple[str, str] | None:
    """One residual block starting at tensor ``x``; returns (output tensor, shortcut kind) or None if no block."""
    cons = w.layers[x].consumers
    if len(cons) != 2:
        return None
    # the shortcut branch is the Add itself (identity) or a 1x1x1 Conv3D that feeds only an Add
    def is_shortcut(c: str) -> bool:
        lay = w.layers[c]
        if lay.cls == "Add":
            return True
        return (lay.cls == "Conv3D" and tuple(lay.config.get("kernel_size", ())) == (1, 1, 1)
                and len(lay.consumers) == 1 and w.layers[lay.consumers[0]].cls == "Add")
    short = [c for c in cons if is_shortcut(c)]
    main = [c for c in cons if c not in short]
    if len(short) != 1 or len(main) != 1:
        first_bad = main[1] if len(main) > 1 else cons[0]
        w.fail(first_bad, f"a {stage} residual block: one main path (Conv3D or BN-relu-Conv3D) and one "
                          "shortcut (the Add, or a Conv3D k(1,1,1) feeding the Add)")
    m = main[0]
    expected_conv = f"{stage} block Conv3D k{kernel} same"
    if w.layers[m].cls == "BatchNormalization":
        if first:
            w.fail(m, f"{expected_conv} (the first block of a stage has no pre-activation BN)")
        eps.append(float(w.bn(m, f"{stage} block pre-activation BatchNormalization").config.get("epsilon", 1e-3)))
        mapping[f"{prefix}.bn0"] = (m, "bn")
        r = w.only_consumer(m, "Activation relu")
        w.relu(r, f"{stage} block pre-activation Activation relu")
        m = w.only_consumer(r, expected_conv)
    elif not first:
        w.fail(m, f"{stage} block pre-activation BatchNormalization (blocks after the first start with BN-relu)")
    c1 = w.conv(m, expected_conv, kernel=kernel, padding="same", filters=width)
    bias.append(bool(c1.config.get("use_bias", True)))
    mapping[f"{prefix}.conv1"] = (m, "conv")
    b1 = w.only_consumer(m, "BatchNormalization")
    eps.append(float(w.bn(b1, f"{stage} block BatchNormalization").config.get("epsilon", 1e-3)))
    mapping[f"{prefix}.bn1"] = (b1, "bn")
    r1 = w.only_consumer(b1, "Activation relu")
    w.relu(r1, f"{stage} block Activation relu")
    c2n = w.only_consumer(r1, expected_conv)
    c2 = w.conv(c2n, expected_conv, kernel=kernel, padding="same", filters=width)
    bias.append(bool(c2.config.get("use_bias", True)))
    mapping[f"{prefix}.conv2"] = (c2n, "conv")
    add = w.only_consumer(c2n, "Add (the residual sum)")
    kind = "identity"
    s = short[0]
    if w.layers[s].cls == "Conv3D":
        # stride along the depth axis is harmless only where that axis has size 1 (the spatial stage)
        depth_stride = None if stage == "spatial" else 1
        sc = w.conv(s, f"{stage} block projection shortcut Conv3D k(1,1,1) valid", kernel=(1, 1, 1),
                    padding="valid", strides=(1, 1, depth_stride), filters=width)
        bias.append(bool(sc.config.get("use_bias", True)))
        mapping[f"{prefix}.shortcut"] = (s, "conv")
        kind = "projection"
        if w.layers[s].consumers[0] != add:
            w.fail(s, f"the shortcut to feed {add!r}")
    elif s != add:
        w.fail(s, f"the block's Add {add!r}")
    a = w.take(add, "Add", "Add (the residual sum)")
    want = {c2n, s if kind == "projection" else x}
    if set(a.inbound) != want or len(a.inbound) != 2:
        w.fail(add, f"Add of {sorted(want)}", f"inputs {a.inbound}")
    return add, kind


def _parse_stage_norms(w: _Walker, x: str, mapping: dict[str, tuple[str, str]], prefix: str,
                       eps: list[float]) -> tuple[str, int]:
    n = 0
    while True:
        cons = w.layers[x].consumers
        if len(cons) != 1 or w.layers[cons[0]].cls != "BatchNormalization":
            return x, n
        b = cons[0]
        eps.append(float(w.bn(b, "stage BatchNormalization").config.get("epsilon", 1e-3)))
        mapping[f"{prefix}.norms.{n}"] = (b, "bn")
        r = w.only_consumer(b, "Activation relu")
        w.relu(r, "Activation relu after a stage BatchNormalization")
        x, n = r, n + 1


def _conv_bn_relu(w: _Walker, x: str, module: str, expected: str, kind: str, mapping: dict[str, tuple[str, str]],
                  eps: list[float], bias: list[bool], *, kernel: tuple[int | None, ...],
                  strides: tuple[int | None, ...] | None = (1, 1, 1), detail: str = "") -> tuple[_Layer, str]:
    """The Conv3D (valid) -> BatchNormalization -> ReLU run consuming ``x``, mapped onto ``module`` and
    ``module_bn``; returns the conv layer and the ReLU's name. ``expected`` names the conv in errors."""
    label = expected.split(" Conv3D")[0]
    cn = w.only_consumer(x, expected)
    conv = w.conv(cn, expected + detail, kernel=kernel, padding="valid", strides=strides)
    bias.append(bool(conv.config.get("use_bias", True)))
    mapping[module] = (cn, kind)
    b = w.only_consumer(cn, "BatchNormalization")
    eps.append(float(w.bn(b, f"{label} BatchNormalization").config.get("epsilon", 1e-3)))
    mapping[f"{module}_bn"] = (b, "bn")
    r = w.only_consumer(b, "Activation relu")
    w.relu(r, f"{label} Activation relu")
    return conv, r


def parse_keras_graph(model_cfg: dict[str, Any]) -> KerasGraph:
    """Recognise the seed's SSRN in a Keras ``model_config``: the inferred :class:`SSRNConfig` and layer map."""
    w = _Walker(model_cfg)
    mapping: dict[str, tuple[str, str]] = {}
    eps: list[float] = []
    bias: list[bool] = []

    inp = w.take(w.input, "InputLayer", "InputLayer (rows, cols, bands, 1)")
    shape = inp.config.get("batch_input_shape") or inp.config.get("batch_shape")
    if (not isinstance(shape, list) or len(shape) != 5 or shape[4] != 1 or shape[1] != shape[2]
            or not all(isinstance(v, int) for v in shape[1:])):
        w.fail(w.input, "InputLayer of shape (None, P, P, bands, 1) with a square patch", f"shape {shape}")
    patch, bands = int(shape[1]), int(shape[3])

    # stem
    stem, x = _conv_bn_relu(w, w.input, "stem", "stem Conv3D k(1,1,k) valid", "conv", mapping, eps, bias,
                            kernel=(1, 1, None), strides=(1, 1, None))
    k = int(stem.config["kernel_size"][2])
    stride = int(stem.config["strides"][2])
    width = int(stem.config["filters"])

    # spectral blocks
    n_spec = 0
    spec_kinds = []
    while True:
        r = _parse_stage_block(w, x, stage="spectral", kernel=(1, 1, k), width=width, first=n_spec == 0,
                               mapping=mapping, prefix=f"spectral_blocks.{n_spec}", eps=eps, bias=bias)
        if r is None:
            break
        x, kind = r
        spec_kinds.append(kind)
        n_spec += 1
    if "projection" in spec_kinds:
        name = mapping[f"spectral_blocks.{spec_kinds.index('projection')}.shortcut"][0]
        raise KerasImportError(f"unexpected {w.describe(name)}: a projection shortcut in the spectral stage; "
                               "SSRN's spectral blocks have identity shortcuts")
    x, spec_norms = _parse_stage_norms(w, x, mapping, "spectral_norms", eps)

    # full-band reduction
    reduced = (bands - k) // stride + 1
    red, x = _conv_bn_relu(w, x, "reduce", f"reduction Conv3D k(1,1,{reduced}) valid", "conv", mapping, eps, bias,
                           kernel=(1, 1, reduced), detail=" (the full band depth after the stem)")
    reduce_width = int(red.config["filters"])
    rs = w.only_consumer(x, f"Reshape to ({patch}, {patch}, {reduce_width}, 1)")
    lay = w.take(rs, "Reshape", f"Reshape to ({patch}, {patch}, {reduce_width}, 1)")
    if list(lay.config.get("target_shape", [])) != [patch, patch, reduce_width, 1]:
        w.fail(rs, f"Reshape to ({patch}, {patch}, {reduce_width}, 1)",
               f"target_shape {lay.config.get('target_shape')}")

    # spatial stem
    ss, x = _conv_bn_relu(w, rs, "spatial_stem", f"spatial stem Conv3D k(3,3,{reduce_width}) valid", "spatial_stem",
                          mapping, eps, bias, kernel=(3, 3, reduce_width))
    swidth = int(ss.config["filters"])

    n_spa = 0
    spa_kinds: list[str] = []
    while True:
        r = _parse_stage_block(w, x, stage="spatial", kernel=(3, 3, 1), width=swidth, first=n_spa == 0,
                               mapping=mapping, prefix=f"spatial_blocks.{n_spa}", eps=eps, bias=bias)
        if r is None:
            break
        x, kind = r
        spa_kinds.append(kind)
        n_spa += 1
    if len(set(spa_kinds)) > 1:
        name = mapping[f"spatial_blocks.{spa_kinds.index('identity')}.conv1"][0]
        raise KerasImportError(f"unexpected {w.describe(name)}: spatial blocks mix identity and projection "
                               "shortcuts; SSRNConfig.spatial_shortcut is one kind for the whole stage")
    x, spa_norms = _parse_stage_norms(w, x, mapping, "spatial_norms", eps)

    # head
    out_side = patch - 2
    pn = w.only_consumer(x, f"AveragePooling3D ({out_side}, {out_side}, 1)")
    pool = w.take(pn, ("AveragePooling3D", "GlobalAveragePooling3D"), f"AveragePooling3D ({out_side}, {out_side}, 1)")
    if pool.cls == "AveragePooling3D":
        if tuple(pool.config.get("pool_size", ())) != (out_side, out_side, 1) or pool.config.get("padding") != "valid":
            w.fail(pn, f"AveragePooling3D pool ({out_side}, {out_side}, 1) valid (a global average)",
                   f"pool {pool.config.get('pool_size')} padding {pool.config.get('padding')!r}")
        fn = w.only_consumer(pn, "Flatten")
        w.take(fn, "Flatten", "Flatten")
        x = fn
    else:
        x = pn
    nxt = w.only_consumer(x, "Dropout or Dense")
    dropout = 0.0
    if w.layers[nxt].cls == "Dropout":
        dropout = float(w.take(nxt, "Dropout", "Dropout").config.get("rate", 0.5))
        nxt = w.only_consumer(nxt, "Dense")
    dense = w.take(nxt, "Dense", "Dense (the classifier)")
    if dense.config.get("activation") not in ("softmax", "linear"):
        w.fail(nxt, "Dense with a softmax (or linear) activation", f"activation {dense.config.get('activation')!r}")
    bias.append(bool(dense.config.get("use_bias", True)))
    mapping["head"] = (nxt, "dense")
    if nxt != w.output or w.layers[nxt].consumers:
        w.fail(nxt, f"the model output {w.output!r} to be the Dense classifier")
    classes = int(dense.config["units"])

    unvisited = [n for n in w.order if n not in set(w.visited)]
    if unvisited:
        w.fail(unvisited[0], "no layers outside the SSRN path (this layer's output is not used by the classifier)")
    if len(set(eps)) != 1:
        raise KerasImportError(f"BatchNormalization epsilons differ between layers ({sorted(set(eps))}); "
                               "SSRNConfig.bn_eps is one value")
    if len(set(bias)) != 1:
        raise KerasImportError("some convolutions have biases and others not; SSRNConfig.conv_bias is one value")
    if n_spec == 0 and n_spa == 0:
        raise KerasImportError("the graph has neither spectral nor spatial residual blocks")
    if n_spec and n_spa and spec_norms != spa_norms:
        raise KerasImportError(f"the spectral stage ends in {spec_norms} BN-relu pairs and the spatial stage in "
                               f"{spa_norms}; SSRNConfig.stage_norms is one value")
    norms = spec_norms if n_spec else spa_norms
    variant = "ssrn" if n_spec and n_spa else ("spc" if n_spec else "spa")
    try:
        config = SSRNConfig(
            bands=bands, classes=classes, patch=patch, stem_width=width, stem_stride=stride, kernel=k,
            spectral_blocks=n_spec, reduce_width=reduce_width, spatial_width=swidth, spatial_blocks=n_spa,
            dropout=dropout, variant=variant, block_form="seed", stage_norms=norms,
            spatial_shortcut=spa_kinds[0] if spa_kinds else "identity", conv_bias=bias[0], bn_eps=eps[0])
    except ValueError as e:
        raise KerasImportError(f"the Keras graph gives an invalid SSRN config: {e}") from None
    if config.reduced_bands != reduced:
        raise KerasImportError(f"reduction depth {reduced} != config.reduced_bands {config.reduced_bands}")
    if variant == "spa" and spec_norms:
        raise KerasImportError("stage norms after an empty spectral stage are not expressible in SSRNConfig")
    return KerasGraph(config, mapping)


# --------------------------------------------------------------------------------------------------
# weights

def _layer_weights(f, layer: str) -> dict[str, np.ndarray]:
    mw = f["model_weights"] if "model_weights" in f else f
    if layer not in mw:
        raise KerasImportError(f"no weights stored for layer {layer!r} under model_weights/")
    g = mw[layer]
    names = [_attr_str(n) for n in g.attrs.get("weight_names", [])]
    out: dict[str, np.ndarray] = {}
    if names:
        for n in names:
            out[n.split("/")[-1].split(":")[0]] = np.asarray(g[n][()], dtype=np.float32)
    else:
        def visit(name: str, obj: Any) -> None:
            if hasattr(obj, "shape"):
                out[name.split("/")[-1].split(":")[0]] = np.asarray(obj[()], dtype=np.float32)
        g.visititems(visit)
    return out


def _need(ws: dict[str, np.ndarray], key: str, shape: tuple[int, ...], layer: str) -> np.ndarray:
    if key not in ws:
        raise KerasImportError(f"layer {layer!r}: weight {key!r} missing (found {sorted(ws)})")
    a = ws[key]
    if tuple(a.shape) != tuple(shape):
        raise KerasImportError(f"layer {layer!r}: weight {key!r} has shape {tuple(a.shape)}, expected {tuple(shape)}")
    return a


def _convert(module: str, kind: str, layer: str, ws: dict[str, np.ndarray],
             target: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Keras weights of one layer -> SSRN state-dict entries for ``module``."""
    out: dict[str, np.ndarray] = {}
    if kind == "bn":
        n = target[f"{module}.running_mean"].shape[0]
        out[f"{module}.weight"] = ws["gamma"] if "gamma" in ws else np.ones(n, np.float32)
        out[f"{module}.bias"] = ws["beta"] if "beta" in ws else np.zeros(n, np.float32)
        out[f"{module}.running_mean"] = _need(ws, "moving_mean", (n,), layer)
        out[f"{module}.running_var"] = _need(ws, "moving_variance", (n,), layer)
        for key in ("weight", "bias"):
            if out[f"{module}.{key}"].shape != (n,):
                raise KerasImportError(f"layer {layer!r}: BN parameter of shape {out[f'{module}.{key}'].shape}, "
                                       f"expected ({n},)")
        return out
    wt = target[f"{module}.weight"]
    if kind == "dense":
        kshape = (wt.shape[1], wt.shape[0])
        out[f"{module}.weight"] = _need(ws, "kernel", kshape, layer).T
    elif kind == "spatial_stem":  # (3, 3, C, 1, O) -> (O, C, 3, 3)
        o, c, kh, kw = wt.shape
        out[f"{module}.weight"] = _need(ws, "kernel", (kh, kw, c, 1, o), layer)[:, :, :, 0, :].transpose(3, 2, 0, 1)
    else:
        o, c, kh, kw = wt.shape
        if module.startswith(("stem", "spectral_blocks.", "reduce")):
            # spectral: Conv2d (O, C, k, 1) <- Keras (1, 1, k, C, O)
            out[f"{module}.weight"] = _need(ws, "kernel", (1, 1, kh, c, o), layer)[0, 0].transpose(2, 1, 0)[..., None]
        else:
            # spatial: Conv2d (O, C, kh, kw) <- Keras (kh, kw, 1, C, O)
            out[f"{module}.weight"] = _need(ws, "kernel", (kh, kw, 1, c, o), layer)[:, :, 0].transpose(3, 2, 0, 1)
    if f"{module}.bias" in target:
        out[f"{module}.bias"] = _need(ws, "bias", (wt.shape[0],), layer)
    elif "bias" in ws:
        raise KerasImportError(f"layer {layer!r} has a bias but the model has none")
    return out


def load_keras(path: str | os.PathLike) -> SSRN:
    """The seed's Keras ``.hdf5`` SSRN as an :class:`SSRN` in eval mode (h5py only; no TensorFlow, no pickle).

    ``forward`` takes patches ``(N, bands, y, x)``: the Keras input ``(N, rows, cols, bands, 1)`` is
    ``patches.permute(0, 2, 3, 1)[..., None]``; it returns logits (the seed's softmax dropped).
    ``model.meta`` records ``source="keras"``, the file name and its sha256.
    """
    import h5py

    path = Path(path)
    cfg = read_keras_config(path)
    graph = parse_keras_graph(cfg)
    with torch.device("meta"):  # the state's names and shapes only
        target = SSRN(graph.config).state_dict()
    state: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            version = _attr_str(f.attrs.get("keras_version", ""))
            for module, (layer, kind) in graph.mapping.items():
                state.update(_convert(module, kind, layer, _layer_weights(f, layer), target))
    except (OSError, RuntimeError, KeyError, AttributeError) as e:  # a damaged file, or a weight it names but lacks
        raise KerasImportError(f"{path}: its weights could not be read ({first_line(e)}); is the file complete and "
                               "undamaged?") from None
    bad = sorted(k for k, v in state.items() if not np.isfinite(v).all())
    if bad:
        raise KerasImportError(f"{path}: the weights of {bad[:5]} hold NaN or inf: the file is damaged (or the Keras "
                               "training diverged); import an intact copy")
    missing = sorted(k for k in target if k not in state and not k.endswith("num_batches_tracked"))
    if missing:
        raise KerasImportError(f"no Keras weights for SSRN parameters {missing[:5]}")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(target[k].shape):  # pragma: no cover - guarded by _need
            raise KerasImportError(f"{k}: converted shape {tuple(v.shape)} != {tuple(target[k].shape)}")
    for k in target:  # BatchNorm's num_batches_tracked: Keras keeps no count (a missing weight was refused above)
        if k.endswith("num_batches_tracked") and k not in tensors:
            tensors[k] = torch.zeros(target[k].shape, dtype=target[k].dtype)
    model = filled_model(graph.config, tensors)
    model.eval()
    model.meta = {
        "source": "keras", "keras_file": path.name, "sha256": file_sha256(path), "keras_version": version,
        "keras_layers": {m: layer for m, (layer, _) in graph.mapping.items()},
        "input_layout": "SSRN.forward takes (N, bands, y, x); Keras input (N, rows=y, cols=x, bands, 1)",
        "output": "logits (the Keras model's final softmax is dropped; argmax unchanged)",
    }
    return model


# --------------------------------------------------------------------------------------------------
# model directories

def _scene_for(dataset: str, data_dir: str | os.PathLike | None):
    """(cube (band, y, x), class_names, palette, source, canonical name, wavelengths) of a dataset, through
    ``ssrn.data.load_dataset`` (registry, data directory, shipped copy)."""
    from .data import load_dataset

    scene = load_dataset(dataset, data_dir)
    cube = scene.cube.values if hasattr(scene.cube, "values") else scene.cube
    return (np.asarray(cube), list(scene.class_names), [list(c) for c in scene.palette], str(scene.source),
            scene.name, scene.wavelengths)


def _dataset_fix(given: str, bands: int, classes: int) -> str:
    """What to pass instead of a ``--dataset`` that does not fit a Keras model of ``bands`` and ``classes``: the
    registered datasets with the model's number of classes (the registry records no band counts), else a scene
    file, or no dataset at all."""
    from .data import DATASETS

    fits = [n for n, spec in DATASETS.items() if len(spec.class_names) == classes and n != given]
    named = (f" (of the registered datasets, {' and '.join(fits)} {'has' if len(fits) == 1 else 'have'} "
             f"{classes} classes)" if fits else "")
    return (f"pass the dataset the model was trained on, a scene of {bands} bands and {classes} classes{named}, as "
            "--dataset NAME or a .mat/.h5/.npz path; or leave --dataset out (the model then records no "
            "normalisation, and the scenes it classifies must be normalised already)")


def seed_standardisation(cube: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and population std (``ddof=0``) over all pixels: the seed's ``preprocessing.scale``."""
    a = np.asarray(cube, dtype=np.float64)
    mean = a.mean(axis=(1, 2))
    std = a.std(axis=(1, 2))
    return mean, np.where(std > 0, std, 1.0)  # sklearn's scale leaves a constant band's scale at 1


def import_keras_to_dir(hdf5: str | os.PathLike, out: str | os.PathLike, *, dataset: str | None = None,
                        data_dir: str | os.PathLike | None = None, command: str | None = None,
                        overwrite: bool = False) -> Path:
    """Convert a seed Keras ``.hdf5`` into a model directory (``weights.safetensors`` + ``model.json``).

    With ``dataset`` (``indian_pines``, ``pavia_university``, ...) the seed's preprocessing is recorded in
    model.json: per-band ``mean``/``std`` over the whole scene (population std, as sklearn's
    ``preprocessing.scale``; the engine applies ``(x - mean) / std``), zero padding of ``patch // 2``,
    class names and palette. The scene is read from ``data_dir`` (else ``$HSI_ENGINE_DATA``, else
    ``../shared/data``; Indian Pines falls back to the copy shipped with hsi-engine). Without ``dataset`` the
    model has no normalisation statistics (a warning is logged): the scenes it classifies must be normalised.

    ``out`` must be new or empty, or (with ``overwrite``) a model directory; it is checked before any reading.
    """
    from .checkpoint import check_model_target, save_model

    check_model_target(out, overwrite)
    model = load_keras(hdf5)
    c = model.config
    meta = dict(model.meta)
    if dataset is not None:
        cube, names, palette, source, name, wavelengths = _scene_for(dataset, data_dir)
        if cube.shape[0] != c.bands:
            raise KerasImportError(f"dataset {dataset!r} has {cube.shape[0]} bands but the Keras model "
                                   f"{Path(hdf5).name} takes {c.bands}: {_dataset_fix(name, c.bands, c.classes)}")
        if len(names) != c.classes:
            raise KerasImportError(f"dataset {dataset!r} has {len(names)} classes but the Keras model "
                                   f"{Path(hdf5).name} predicts {c.classes}: "
                                   f"{_dataset_fix(name, c.bands, c.classes)}")
        mean, std = seed_standardisation(cube)
        meta.update({
            "dataset": name, "mean": mean.tolist(), "std": std.tolist(), "class_names": names,
            "palette": palette, "padding": {"mode": "zeros", "width": c.patch // 2},
            "normalization": {"kind": "per_band_standardize", "over": "whole scene, all pixels",
                              "std": "population (ddof=0), as sklearn.preprocessing.scale in the seed",
                              "scene": source, "apply": "(x - mean) / std"},
        })
        if wavelengths is not None and len(wavelengths) == c.bands:
            meta["wavelengths"] = list(wavelengths)
    if command is not None:
        meta["command"] = command
    model.meta = meta
    written = save_model(model, out, meta, overwrite=overwrite)
    log.info("wrote %s: %d bands, %d classes, from %s", written, c.bands, c.classes, Path(hdf5).name)
    if dataset is None:
        log.warning("%s has no per-band mean/std (no --dataset given): the scenes it classifies must already be "
                    "normalised as in training, or every pixel may fall into one class; pass --dataset NAME to "
                    "record the seed's preprocessing", out)
    return written
