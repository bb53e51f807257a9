"""The design's dependency direction: ``hsi_engine -> kernels``, ``hsi_engine -> ssrn``; ``ssrn`` imports neither
and ``kernels`` never imports ``hsi_engine``, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imported_packages(path: Path) -> set[str]:
    """The top-level packages a module imports anywhere in it (absolute imports; relative ones stay inside)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package, forbidden", [("ssrn", {"hsi_engine", "kernels"}), ("kernels", {"hsi_engine"})])
def test_a_lower_package_imports_no_higher_one(package, forbidden):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules under {ROOT / package}"
    wrong = {str(f.relative_to(ROOT)): sorted(_imported_packages(f) & forbidden) for f in files}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_scan_sees_imports_inside_functions(tmp_path):
    """The check must not pass by missing the lazy imports the old trainer used."""
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from hsi_engine.lock import output_lock\n    import kernels.spectral\n")
    assert _imported_packages(f) == {"hsi_engine", "kernels"}
