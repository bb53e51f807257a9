"""SSRN shapes, layer sizes against the DESIGN table, parameter count, gradients."""

from __future__ import annotations

import pytest
import torch

from ssrn import PRESETS, SSRN, SSRNConfig, count_parameters


def expected_params(c: SSRNConfig) -> int:
    """Parameter count from the architecture, written independently of the model code (paper block form)."""
    bn = lambda ch: 2 * ch  # noqa: E731  (gamma, beta; running stats are buffers)
    w, s, k = c.stem_width, c.spatial_width, c.kernel
    rb = (c.bands - k) // c.stem_stride + 1
    n_spec = 0 if c.variant == "spa" else c.spectral_blocks
    n_spat = 0 if c.variant == "spc" else c.spatial_blocks
    total = w * k + bn(w)                                   # stem conv (1 -> 24, k x 1) + BN
    total += n_spec * 2 * (w * w * k + bn(w))               # spectral residual blocks
    total += c.reduce_width * w * rb + bn(c.reduce_width)   # full-band reduction
    total += s * c.reduce_width * 9 + bn(s)                 # spatial stem 3x3
    total += n_spat * 2 * (s * s * 9 + bn(s))               # spatial residual blocks
    total += s * c.classes + c.classes                      # linear head
    return total


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("patch", [5, 7, 9, 11])
@pytest.mark.parametrize("variant", ["ssrn", "spc", "spa"])
def test_shapes_and_params(preset, patch, variant):
    c = SSRNConfig.from_name(preset, patch=patch, variant=variant)
    torch.manual_seed(0)
    m = SSRN(c).eval()
    x = torch.randn(2, c.bands, patch, patch)
    with torch.no_grad():
        f = m.spectral(x)
        logits = m(x)
    assert f.shape == (2, 128, patch, patch)
    assert logits.shape == (2, c.classes)
    assert torch.isfinite(logits).all()
    assert count_parameters(m) == expected_params(c)


def test_indian_pines_layer_shapes_match_design_table():
    c = SSRNConfig.from_name("indian_pines")
    assert (c.bands, c.classes, c.patch) == (200, 16, 7)
    assert c.reduced_bands == 97
    m = SSRN(c).eval()
    seen = {}
    hooks = [getattr(m, name).register_forward_hook(lambda mod, i, o, name=name: seen.__setitem__(name, o.shape))
             for name in ("stem", "reduce", "spatial_stem")]
    hooks += [blk.register_forward_hook(lambda mod, i, o, j=j: seen.__setitem__(f"spec{j}", o.shape))
              for j, blk in enumerate(m.spectral_blocks)]
    hooks += [blk.register_forward_hook(lambda mod, i, o, j=j: seen.__setitem__(f"spat{j}", o.shape))
              for j, blk in enumerate(m.spatial_blocks)]
    with torch.no_grad():
        m(torch.randn(3, 200, 7, 7))
    for h in hooks:
        h.remove()
    # spectral layers hold (N, channels, bands, pixels): 24 x 97 per pixel of the 7 x 7 patch
    assert seen["stem"] == (3, 24, 97, 49)
    assert seen["spec0"] == seen["spec1"] == (3, 24, 97, 49)
    assert seen["reduce"] == (3, 128, 1, 49)
    assert seen["spatial_stem"] == (3, 24, 5, 5)
    assert seen["spat0"] == seen["spat1"] == (3, 24, 5, 5)
    assert len(m.spectral_blocks) == 2 and len(m.spatial_blocks) == 2
    assert count_parameters(m) == 363800


@pytest.mark.parametrize("variant", ["ssrn", "spc", "spa"])
def test_every_parameter_gets_a_gradient(variant):
    c = SSRNConfig(bands=24, classes=5, patch=7, variant=variant)
    torch.manual_seed(1)
    m = SSRN(c).train()
    x = torch.randn(4, 24, 7, 7)
    loss = torch.nn.functional.cross_entropy(m(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_forward_rejects_wrong_patch_shape():
    m = SSRN(SSRNConfig(bands=24, classes=3))
    with pytest.raises(ValueError, match="expects patches"):
        m(torch.randn(1, 23, 7, 7))


def test_spectral_is_per_pixel():
    """The spectral stage has no spatial mixing: a pixel's features equal those computed on it alone."""
    c = SSRNConfig(bands=30, classes=3)
    torch.manual_seed(2)
    m = SSRN(c).eval()
    x = torch.randn(1, 30, 7, 7)
    with torch.no_grad():
        full = m.spectral(x)
        single = m.spectral(x[:, :, 2:3, 4:5])
    torch.testing.assert_close(full[:, :, 2:3, 4:5], single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda: SSRNConfig.from_name(None), r"from_name takes a preset's name \(a str, .*got NoneType None"),
    (lambda: SSRNConfig.from_name(3), r"from_name takes a preset's name .*got int 3"),
    (lambda: SSRNConfig.from_name(b"indian_pines"), r"got bytes b'indian_pines': decode it first"),
    (lambda: SSRNConfig.from_name("ksc", foo=1), r"unknown SSRNConfig fields \['foo'\]"),
    (lambda: PRESETS["ksc"].replace(foo=1), r"unknown SSRNConfig fields \['foo'\]; expected a subset of"),
    (lambda: SSRN(PRESETS["ksc"].to_dict()), r"SSRN takes an SSRNConfig; got dict: pass SSRN\(SSRNConfig.from_dict"),
    (lambda: SSRN("indian_pines"), r"got str: pass SSRN\(SSRNConfig.from_name\('indian_pines'\)\)"),
    (lambda: count_parameters(PRESETS["ksc"]), r"takes a model .*got SSRNConfig: .*count_parameters\(SSRN\(config\)\)"),
])
def test_a_wrong_argument_type_is_an_option_error_saying_what_to_pass(call, message):
    """Each was a bare TypeError or AttributeError ('dict' object has no attribute 'kernel')."""
    from ssrn.errors import OptionError

    with pytest.raises(OptionError, match=message):
        call()
