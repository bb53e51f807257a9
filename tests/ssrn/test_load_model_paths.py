"""``load_model``'s answers to paths that are no model directory path: a URL (which pathlib collapsed to
'https:/...' and called missing) and bytes (pathlib's bare TypeError)."""

from __future__ import annotations

import pytest

from ssrn.checkpoint import load_model
from ssrn.errors import CheckpointError, HSIEngineError, OptionError


@pytest.mark.parametrize("url", ["https://example.com/model", "s3://bucket/models/in", "file:///tmp/model"])
def test_a_url_is_named_as_one_not_mangled(url):
    with pytest.raises(CheckpointError, match=r"is a URL: hsi-engine loads local model directories only") as e:
        load_model(url)
    assert f"model {url} is a URL" in str(e.value)


@pytest.mark.parametrize("path, hint", [(b"/models/in", r"decode it first \(os\.fsdecode\(path\)\)"),
                                        (42, r"got int 42")])
def test_a_path_that_is_not_text_is_an_option_error(path, hint):
    with pytest.raises(OptionError, match=rf"load_model takes a model directory path .*{hint}") as e:
        load_model(path)
    assert isinstance(e.value, HSIEngineError) and isinstance(e.value, ValueError)


def test_a_missing_path_starting_with_a_tilde_hints_at_expanduser(tmp_path, monkeypatch):
    """load_model('~/m') said 'does not exist' while ~/m existed."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    with pytest.raises(CheckpointError, match=rf"model directory ~/m does not exist; .* \(the path '~/m' starts with "
                                              rf"'~', which Python does not expand .*os.path.expanduser\('~/m'\) "
                                              rf"\({tmp_path}/m\)"):
        load_model("~/m")
