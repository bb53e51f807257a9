"""The public API's type hints say what the functions return and take, for a user's type checker."""

import typing

import hsi_engine
import ssrn


def _returns(fn) -> list[str]:
    return [o.__annotations__["return"] for o in typing.get_overloads(fn)]


def test_classify_s_return_type_follows_probabilities():
    """classify was declared to return ``DataArray | Dataset`` whatever ``probabilities`` said: the README's own
    ``labels.values`` / ``labels.plot.imshow()`` failed a type checker (a Dataset's ``values`` is a method)."""
    from hsi_engine.api import classify

    overloads = typing.get_overloads(classify)
    assert _returns(classify) == ["xr.DataArray", "xr.Dataset", "xr.DataArray | xr.Dataset"]
    assert overloads[0].__annotations__["probabilities"] == "Literal[False]"
    assert overloads[1].__annotations__["probabilities"] .replace('"', "'") == "Literal[True, 'float32', 'float16']"


def test_documented_argument_types_are_in_the_hints():
    """patch_forward documents numpy arrays and run_training passes a torch.device to Trainer, which takes one;
    their hints said torch.Tensor only and str only."""
    from hsi_engine.fused import patch_forward
    from ssrn.train import run_training

    assert "np.ndarray" in patch_forward.__annotations__["normalised"]
    assert "np.ndarray" in patch_forward.__annotations__["pixels"]
    assert "torch.device" in run_training.__annotations__["device"]


def test_the_types_a_user_gets_back_are_public():
    """Trainer.fit returns a TrainResult and load_dataset a Scene: neither could be named from ``ssrn``."""
    from ssrn.data import Scene
    from ssrn.train import TrainResult

    assert ssrn.Scene is Scene and ssrn.TrainResult is TrainResult
    assert {"Scene", "TrainResult"} <= set(ssrn.__all__) and {"Scene", "TrainResult"} <= set(dir(ssrn))
    assert "__version__" in dir(hsi_engine) and isinstance(hsi_engine.__version__, str)
