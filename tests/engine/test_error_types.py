"""README's promise: every error the packages raise is an ``hsi_engine.HSIEngineError`` (also a ``ValueError``
where the input is at fault), so one ``except`` covers a run. The public API's argument checks raise
:class:`~hsi_engine.OptionError` (an ``HSIEngineError`` and a ``ValueError``); a path that is not there is also
a ``FileNotFoundError``. Messages are those the builtins carried before."""

from __future__ import annotations

import numpy as np
import pytest

import hsi_engine
from hsi_engine.demo import SHIPPED_MODEL, SHIPPED_SCENE
from hsi_engine.writers import write_classmap


@pytest.fixture(scope="module")
def scene():
    return hsi_engine.open_scene(SHIPPED_SCENE).isel(y=slice(0, 20), x=slice(0, 20))


@pytest.fixture(scope="module")
def model():
    return hsi_engine.load_model(SHIPPED_MODEL)


def test_the_new_classes_are_exported_and_keep_their_builtins():
    import ssrn.errors
    from ssrn.data import DataError, DataNotFoundError
    from ssrn.train import TrainOptionError

    assert hsi_engine.OptionError is ssrn.errors.OptionError
    assert issubclass(hsi_engine.OptionError, hsi_engine.HSIEngineError)
    assert issubclass(hsi_engine.OptionError, ValueError)
    for cls in (hsi_engine.SceneNotFoundError, DataNotFoundError):
        assert issubclass(cls, hsi_engine.HSIEngineError) and issubclass(cls, FileNotFoundError)
        assert issubclass(cls, ValueError)
    assert issubclass(hsi_engine.SceneNotFoundError, hsi_engine.SceneError)
    assert issubclass(DataNotFoundError, DataError)
    assert issubclass(TrainOptionError, hsi_engine.OptionError)
    for name in ("OptionError", "SceneNotFoundError"):
        assert name in hsi_engine.__all__ and name in hsi_engine.errors.__all__


def test_open_scene_of_a_missing_path(tmp_path):
    missing = tmp_path / "nope.tif"
    with pytest.raises(hsi_engine.HSIEngineError, match=f"scene {missing} does not exist") as e:
        hsi_engine.open_scene(missing)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, hsi_engine.SceneNotFoundError)


@pytest.mark.parametrize("kwargs, match", [
    ({"tile": 0}, r"tile sides must be >= 1 pixel, got \(0, 0\)"),
    ({"tile": "a"}, r"tile='a'; expected a whole number of pixels"),
    ({"cache_blocks": -1}, r"cache_blocks must be >= 0 \(0 turns the block cache off\); got -1"),
    ({"decoders": -1}, r"decoders must be >= 0"),
    ({"spatial_precision": "foo"}, r"spatial_precision must be 'auto', 'float32' or the engine's precision"),
    ({"backend": "foo"}, r"unknown spectral backend 'foo'; valid backends are"),
    ({"precision": "fp8"}, r"precision must be one of \['bfloat16', 'float16', 'float32'\], got 'fp8'"),
    ({"readers": 0}, r"readers and queue_depth must be >= 1; got readers=0"),
    ({"queue_depth": 0}, r"readers and queue_depth must be >= 1"),
    ({"nodata": "abc"}, r"nodata='abc'; expected a number"),
    ({"probabilities": "x"}, r"probabilities must be a bool, 'float32' or 'float16'; got 'x'"),
    ({"device": "foo"}, r"device 'foo' is not a torch device name"),
])
def test_classify_option_errors(scene, model, kwargs, match):
    with pytest.raises(hsi_engine.HSIEngineError, match=match) as e:
        hsi_engine.classify(scene, model, progress=False, **({"device": "cpu"} | kwargs))
    assert isinstance(e.value, ValueError) and isinstance(e.value, hsi_engine.OptionError)


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_classify_to_file_probabilities_refused_before_the_scene_is_opened(scene, model, tmp_path, suffix):
    out = tmp_path / f"map{suffix}"
    with pytest.raises(hsi_engine.HSIEngineError, match="probabilities must be a bool, 'float16' or 'float32'; "
                                                         "got 'x'") as e:
        hsi_engine.classify_to_file(scene, model, out, probabilities="x", device="cpu", progress=False)
    assert isinstance(e.value, ValueError)
    # a scene that is not there: the option is refused first, on either path (streaming and resumable)
    with pytest.raises(hsi_engine.OptionError, match="probabilities must be"):
        hsi_engine.classify_to_file(tmp_path / "missing.tif", model, out, probabilities="x", device="cpu")
    assert not out.exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"overwrite": "False"}, r"overwrite must be True or False; got str 'False': a string from a config file"),
    ({"resume": "no"}, r"resume must be True or False; got str 'no'"),
    ({"resume": 1}, r"resume must be True or False; got int 1"),
    ({"progress": "yes"}, r"progress must be True or False; got str 'yes'"),
    ({"on_written": "print"}, r"on_written must be a function taking the output's path, or None; got str"),
])
def test_classify_to_file_flags_must_be_bools(scene, model, tmp_path, kwargs, match):
    """A truthy string (overwrite='False' from os.environ) replaced a map; on_written='print' failed only after
    the map was committed."""
    out = tmp_path / "map.tif"
    out.write_bytes(b"someone's map")
    with pytest.raises(hsi_engine.OptionError, match=match):
        hsi_engine.classify_to_file(scene, model, out, device="cpu", **kwargs)
    with pytest.raises(hsi_engine.OptionError, match="overwrite must be True or False"):
        write_classmap(np.ones((4, 4), np.uint8), out, class_names=["a"], overwrite="False")
    assert out.read_bytes() == b"someone's map"
    np.testing.assert_array_equal(  # numpy's bools are bools
        hsi_engine.classify(scene, model, device="cpu", progress=np.False_).values,
        hsi_engine.classify(scene, model, device="cpu", progress=False).values)


def test_patch_forward_takes_arrays_refuses_pixels_outside_and_runs_in_eval_mode(model):
    """Negative pixels wrapped to the far edge; a model in train mode used batch statistics (the engine folds the
    running ones); numpy scenes and pixel lists raised bare torch errors."""
    import torch

    from hsi_engine.fused import patch_forward

    torch.manual_seed(0)
    x = torch.randn(model.config.bands, 9, 7)
    ref = patch_forward(model.eval(), x)
    model.train()
    try:
        torch.testing.assert_close(patch_forward(model, x.double().numpy()), ref, rtol=1e-5, atol=1e-6)
        assert model.training  # its mode is put back
    finally:
        model.eval()
    torch.testing.assert_close(patch_forward(model, x, [[8, 6], [0, 0]]), ref[[62, 0]])
    for pixels, match in (([[-1, 0]], r"pixel \[-1, 0\] lies outside the 9 x 7 scene"),
                          ([[9, 0]], "lies outside"), ([[0.5, 1]], r"pixels must be an \(N, 2\) integer array"),
                          ([0, 1], r"got \(2,\)")):
        with pytest.raises(hsi_engine.OptionError, match=match):
            patch_forward(model, x, pixels)
    with pytest.raises(hsi_engine.OptionError, match=r"normalised must be a \(bands, H, W\) floating array"):
        patch_forward(model, x[0])


@pytest.mark.parametrize("kwargs, match", [
    ({"fp32_products": "foo"}, r"fp32_products must be one of \['ieee'"),
    ({"spatial": "foo"}, r"spatial must be one of \['auto', 'conv', 'dense'\], got 'foo'"),
    ({"precision": "fp8"}, r"precision must be one of"),
    ({"spatial_precision": "foo"}, r"spatial_precision must be 'auto', 'float32'"),
    ({"backend": "foo"}, r"unknown spectral backend 'foo'"),
    ({"device": "tpu"}, r"device 'tpu' is not a torch device name; expected cpu, cuda or cuda:N"),
    ({"device": "mps"}, r"device 'mps' is not supported by the engine"),
    pytest.param({"device": "cuda"}, r"sees no CUDA device", marks=pytest.mark.skipif(
        __import__("torch").cuda.is_available(), reason="a test of the refusal where CUDA is absent")),
])
def test_fused_ssrn_option_errors(model, kwargs, match):
    from hsi_engine.fused import FusedSSRN

    with pytest.raises(hsi_engine.HSIEngineError, match=match) as e:
        FusedSSRN(model, **kwargs)
    assert isinstance(e.value, ValueError)


def test_kernels_device_name_error():
    from kernels import available_backends

    with pytest.raises(hsi_engine.OptionError, match=r"device 'tpu' is not a torch device name"):
        available_backends("tpu")


def test_kernels_and_a_fused_tile_raise_the_engine_s_errors(model):
    """The kernels' argument checks and FusedSSRN's tile check raised bare ValueError / TypeError (a numpy tile an
    AttributeError), which a service's ``except HSIEngineError`` let through. Still ValueError / TypeError."""
    import numpy as np
    import torch

    import kernels
    from hsi_engine.fused import FusedSSRN, fold_spectral

    program = fold_spectral(model)
    cases = [(lambda: kernels.spectral_stage_reference(torch.zeros(3, program.bands - 1), program), ValueError,
              r"expected pixels \(P, 200\)"),
             (lambda: kernels.spectral_stage_reference(torch.zeros(3, program.bands, dtype=torch.int64), program),
              TypeError, "floating point"),
             (lambda: kernels.spectral_stage_triton(torch.zeros(3, program.bands), program), Exception, ""),
             (lambda: FusedSSRN(model)(torch.zeros(program.bands - 1, 9, 9)), ValueError, "expected a padded tile")]
    for call, kind, match in cases:
        with pytest.raises(hsi_engine.HSIEngineError, match=match) as e:
            call()
        assert isinstance(e.value, kind)
    tile = np.random.default_rng(0).normal(size=(program.bands, 9, 9))  # float64, as numpy makes it: taken
    np.testing.assert_array_equal(FusedSSRN(model)(tile).numpy(),  # as patch_forward takes one
                                  FusedSSRN(model)(torch.from_numpy(tile.astype(np.float32))).numpy())


def test_resolve_backend_option_error():
    from kernels.dispatch import resolve_backend

    with pytest.raises(hsi_engine.HSIEngineError, match=r"unknown spectral backend 'cudnn'") as e:
        resolve_backend("cudnn")
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("args, kwargs, match", [
    ((10, 10, 0, 3), {}, r"tile sides must be >= 1 pixel"),
    ((10, 10, "a", 3), {}, r"tile='a'"),
    ((10, 10, 4, -1), {}, r"halo must be >= 0, got -1"),
    ((0, 10, 4, 3), {}, r"scene must have at least one pixel, got 0 x 10"),
    ((10, 10, 4, 3), {"chunks": (0, None)}, r"chunk size must be >= 1, got 0"),
    ((10, 10, 4, 3), {"chunks": ((4, 4), None)}, r"chunk sizes \[4, 4\] do not add up to the axis length 10"),
    ((10, 12, 4, 3), {"chunks": ((5, 5), (3, 3))}, r"chunk sizes \[3, 3\] do not add up to the axis length 12"),
])
def test_plan_tiles_argument_errors(args, kwargs, match):
    with pytest.raises(hsi_engine.HSIEngineError, match=match) as e:
        hsi_engine.plan_tiles(*args, **kwargs)
    assert isinstance(e.value, ValueError)


def test_run_plan_option_errors(scene, model):
    from hsi_engine.fused import FusedSSRN
    from hsi_engine.runner import ArraySink, check_read_settings, run_plan

    engine = FusedSSRN(model, backend="eager", device="cpu")
    plan = hsi_engine.plan_tiles(20, 20, 10, model.config.halo)
    sink = ArraySink(20, 20, model.config.classes)
    for kwargs, match in (({"normalise_on": "gpu"}, "normalise_on must be 'host' or 'device'; got 'gpu'"),
                          ({"readers": 0}, "readers and queue_depth must be >= 1")):
        with pytest.raises(hsi_engine.HSIEngineError, match=match) as e:
            run_plan(scene.values, plan, engine, sink, progress=False, **kwargs)
        assert isinstance(e.value, ValueError)
    with pytest.raises(hsi_engine.OptionError, match="decoders must be >= 0"):
        check_read_settings(cache_blocks=None, decoders=-2)


# --------------------------------------------------------------------------------------------------
# the trainer


@pytest.fixture
def no_data_read(monkeypatch):
    """Fail the test if run_training reaches its data."""
    import ssrn.train

    def read(*args, **kwargs):
        raise AssertionError("run_training read the data before refusing an option")

    import hsi_engine.training

    monkeypatch.setattr(ssrn.train, "load_dataset", read)
    monkeypatch.setattr(hsi_engine.training, "load_labelled_raster", read)


@pytest.mark.parametrize("kwargs, match", [
    ({"optimizer": "sgd"}, r"optimizer must be 'rmsprop' or 'adamw', got 'sgd'"),
    ({"schedule": "foo"}, r"schedule must be 'constant' or 'cosine', got 'foo'"),
    ({"class_weight": "foo"}, r"class_weight must be None, 'none' or 'balanced', got 'foo'"),
    ({"variant": "foo"}, r"variant must be one of \('ssrn', 'spc', 'spa'\)"),
    ({"patch": 4}, r"patch must be an odd whole number 3..31"),
    ({"config_overrides": {"dropout": 2.0}}, r"dropout must be a finite number"),
    ({"seed": -1}, r"seed \(--seed\) must be in 0..2\*\*63-1"),
    ({"seed": 10 ** 20}, r"seed \(--seed\) must be in 0..2\*\*63-1"),
    ({"seed": 1.5}, r"seed \(--seed\) must be a whole number, got 1.5 \(float\)"),
    ({"epochs": 2.5}, r"epochs \(--epochs\) must be a whole number, got 2.5"),
    ({"batch_size": True}, r"batch_size \(--batch-size\) must be a whole number, got True"),
    ({"per_class": 2.5}, r"per_class \(--per-class\) must be a whole number"),
    ({"lr": "0.001"}, r"lr \(--lr\) must be a number, got '0.001' \(str\)"),
])
def test_run_training_options_refused_before_the_data_is_read(tmp_path, no_data_read, kwargs, match):
    from ssrn.train import TrainOptionError, run_training

    with pytest.raises(hsi_engine.HSIEngineError, match=match) as e:
        run_training("indian_pines", tmp_path / "m", **{"epochs": 1, "device": "cpu", **kwargs})
    assert isinstance(e.value, ValueError) and isinstance(e.value, TrainOptionError)
    assert not (tmp_path / "m").exists()


def test_run_training_bad_optimizer_wins_over_missing_data(tmp_path):
    """A data directory that is not there is only found when the data is read: the option is refused first."""
    from ssrn.train import run_training

    with pytest.raises(hsi_engine.OptionError, match="optimizer must be"):
        run_training("indian_pines", tmp_path / "m", data_dir=tmp_path / "nonexist", epochs=1, device="cpu",
                     optimizer="sgd")


def test_trainer_option_errors(model):
    from ssrn.train import TrainOptionError, Trainer

    for kwargs in ({"optimizer": "sgd"}, {"schedule": "foo"}, {"class_weight": "foo"}):
        with pytest.raises(TrainOptionError):
            Trainer(model, device="cpu", **kwargs)


@pytest.mark.parametrize("case, match", [
    ("data_dir", r"data directory .*nonexist does not exist; expected the directory"),
    ("labels", r"label raster .*nolabels.tif not found"),
    ("scene", r"scene file .*nope.npz not found"),
])
def test_run_training_missing_data(tmp_path, case, match):
    from hsi_engine.training import train
    from ssrn.data import DataNotFoundError

    dataset, kwargs = {"data_dir": ("indian_pines", {"data_dir": tmp_path / "nonexist"}),
                       "labels": (str(SHIPPED_SCENE), {"labels": tmp_path / "nolabels.tif"}),
                       "scene": (str(tmp_path / "nope.npz"), {})}[case]
    with pytest.raises(hsi_engine.HSIEngineError, match=match) as e:
        train(dataset, tmp_path / "m", epochs=1, device="cpu", **kwargs)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, DataNotFoundError)


def test_load_dataset_missing_files(tmp_path):
    from ssrn.data import load_dataset

    with pytest.raises(hsi_engine.HSIEngineError, match="dataset 'salinas': looked in") as e:
        load_dataset("salinas", tmp_path)
    assert isinstance(e.value, FileNotFoundError)


def test_mat_scene_without_ground_truth(tmp_path):
    import numpy as np
    import scipy.io

    from ssrn.data import load_dataset

    p = tmp_path / "scene.mat"
    scipy.io.savemat(p, {"cube": np.zeros((4, 4, 3))})
    with pytest.raises(hsi_engine.HSIEngineError, match="no ground truth for") as e:
        load_dataset(str(p))
    assert isinstance(e.value, FileNotFoundError)


def test_cluster_option_errors_are_option_errors_too() -> None:
    """README: an argument outside what a function accepts is an OptionError; workers=0 or workers with a scheduler
    raised a ClusterUsageError that `except OptionError` missed."""
    import hsi_engine
    from hsi_engine.errors import ClusterUsageError, OptionError

    assert issubclass(ClusterUsageError, OptionError) and issubclass(ClusterUsageError, ValueError)
    with pytest.raises(OptionError, match="workers"):
        hsi_engine.classify_to_file("nope.tif", "nope", "out.zarr", workers=0)


def test_ssrn_public_functions_raise_the_projects_errors(tmp_path):
    """Raised outside the hierarchy before: a preset name (KeyError), a config field (ValueError), a missing
    Keras file or .mat file (FileNotFoundError), metrics on mismatched labels (ValueError). Each keeps its
    builtin as a base, so older ``except`` clauses still catch it."""
    import numpy as np

    import ssrn
    from ssrn.config import SSRNConfig
    from ssrn.data import load_mat_array

    with pytest.raises(hsi_engine.OptionError, match="no SSRN preset 'nope'; known presets") as e:
        SSRNConfig.from_name("nope")
    assert isinstance(e.value, KeyError) and not str(e.value).startswith('"')
    with pytest.raises(hsi_engine.OptionError, match="bands must be"):
        SSRNConfig(bands=-1, classes=2)
    for path in (tmp_path / "missing.hdf5", tmp_path):
        with pytest.raises(hsi_engine.HSIEngineError, match="Keras model file .* not found|is a directory") as e:
            ssrn.import_keras_to_dir(path, tmp_path / "m")
        assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(hsi_engine.HSIEngineError, match="scene file .* not found") as e:
        load_mat_array(tmp_path / "missing.mat", what="scene")
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(hsi_engine.OptionError, match="differ in length"):
        ssrn.classification_report(np.zeros(3, int), np.zeros(4, int))


@pytest.mark.parametrize("alias, preset", [("indianpines", "indian_pines"), ("pavia_u", "pavia_university"),
                                           ("IP", "indian_pines"), ("Kennedy-Space-Center", "ksc")])
def test_presets_and_datasets_know_the_same_short_names(alias, preset):
    """``SSRNConfig.from_name`` and ``ssrn.data.dataset_spec`` read one alias table (the config's lacked two)."""
    from ssrn.config import PRESETS, SSRNConfig
    from ssrn.data import dataset_spec

    assert SSRNConfig.from_name(alias) == PRESETS[preset]
    assert dataset_spec(alias).name == preset


@pytest.mark.parametrize("call, match", [
    (lambda: hsi_engine.open_scene(SHIPPED_SCENE, chunks={"y": 0}), r"each chunk size must be a whole number >= 1"),
    (lambda: hsi_engine.open_scene(SHIPPED_SCENE, chunks="8"), r"dask reads the text '8' as a number of bytes; pass 8"),
    (lambda: hsi_engine.open_scene(SHIPPED_SCENE, variable=b"x"), r"variable must be the name of one array"),
    (lambda: hsi_engine.plan_tiles(20, 20, 8, 3, chunks=8), r"chunks must be a \(y_chunks, x_chunks\) pair"),
    (lambda: hsi_engine.plan_tiles(20, 20, 8, True), r"halo must be a whole number of pixels; got bool True"),
    (lambda: hsi_engine.plan_tiles(20.0, 20, 8, 3), r"height must be a whole number of pixels; got float"),
    (lambda: hsi_engine.FusedSSRN(SHIPPED_MODEL), r"FusedSSRN takes an ssrn.SSRN model; got PosixPath: load a model"),
    (lambda: hsi_engine.classify(b"scene.tif", SHIPPED_MODEL), r"decode a bytes path with os.fsdecode"),
])
def test_arguments_of_the_wrong_type_are_named(call, match):
    """Each raised a bare numpy/dask/pathlib error, or was taken in another sense (chunks='8': one-byte chunks)."""
    with pytest.raises(hsi_engine.HSIEngineError, match=match):
        call()


def test_numpy_chunk_sizes_plan_as_ints():
    plan = hsi_engine.plan_tiles(20, 20, 8, 3, chunks=(np.int64(8), np.int64(8)))
    assert plan == hsi_engine.plan_tiles(20, 20, 8, 3, chunks=(8, 8))


def test_a_one_element_fill_value_array_is_the_nodata_value(scene, model):
    """HDF5 and some NetCDF writers store ``_FillValue = [-9999.]``: it was refused as 'not a number'."""
    raw = scene.values.astype(np.float32)
    raw[:, 3, 4] = -9999.0
    as_scalar = hsi_engine.classify(scene.copy(data=raw).assign_attrs(_FillValue=-9999.0), model, device="cpu",
                                    progress=False).values
    as_array = hsi_engine.classify(scene.copy(data=raw).assign_attrs(_FillValue=np.array([-9999.0])), model,
                                   device="cpu", progress=False).values
    assert as_array[3, 4] == 0
    np.testing.assert_array_equal(as_array, as_scalar)


@pytest.mark.parametrize("kwargs", [{"backend": "x"}, {"precision": "fp16"}])
def test_run_demo_option_errors_are_option_errors(tmp_path, kwargs):
    from hsi_engine.demo import run_demo

    with pytest.raises(hsi_engine.OptionError, match="must be one of") as e:
        run_demo(tmp_path / "out", **kwargs)
    assert isinstance(e.value, ValueError) and not (tmp_path / "out").exists()


def test_a_vrt_scene_is_told_the_conversion_that_keeps_its_band_metadata(tmp_path):
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text("<VRTDataset/>")
    with pytest.raises(hsi_engine.SceneError, match=r"GDAL virtual raster .*`gdal_translate .*mosaic\.tif`"):
        hsi_engine.open_scene(vrt)
