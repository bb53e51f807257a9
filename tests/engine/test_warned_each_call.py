"""Warnings that flag one call's result are said by every call that deserves them: Python's default shows a message
once per line of code until the filters change, so of a service's overlapping calls one was said."""

import warnings

import numpy as np
import pytest

import hsi_engine
from hsi_engine.errors import UnnormalisedInputWarning
from hsi_engine.logs import affine_mul_quiet



def _bare_model():
    from ssrn.config import SSRNConfig
    from ssrn.model import SSRN

    return SSRN(SSRNConfig(bands=12, classes=3, patch=3, stem_width=4, reduce_width=4, spatial_width=4)).eval()


def test_overlapping_calls_each_say_their_scene_is_unnormalised():
    model = _bare_model()
    rng = np.random.default_rng(0)
    scenes = [rng.integers(0, 4000, (12, 5, 5)).astype(np.uint16) for _ in range(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("default")  # as a service runs: once per message and line
        with affine_mul_quiet():  # what another call in flight holds: the filters do not change between these calls
            for scene in scenes:
                hsi_engine.classify(scene, model, tile=5, progress=False)
                hsi_engine.classify(scene, model, tile=5, progress=False, nodata=float("nan"))
    said = [str(w.message) for w in caught if issubclass(w.category, UnnormalisedInputWarning)]
    nan = [str(w.message) for w in caught if "nodata=nan (--nodata nan) masks nothing" in str(w.message)]
    assert len(said) == 6 and len(nan) == 3, [str(w.message)[:60] for w in caught]
    assert {w.filename for w in caught} == {__file__}  # still the user's line
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnnormalisedInputWarning)  # filters still apply
        with pytest.raises(UnnormalisedInputWarning):
            hsi_engine.classify(scenes[0], model, tile=5, progress=False)
