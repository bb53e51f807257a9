"""Fixtures of the kernel tests."""

import pytest

from kernels import dispatch


def _clear_dispatch_caches() -> None:
    for name in ("_compiled", "_compile_failure", "_warn_once", "_triton_self_check_cached"):
        fn = getattr(dispatch, name, None)
        if fn is not None:
            fn.cache_clear()


@pytest.fixture
def fresh_dispatch():
    """Dispatch's per-process caches cleared before and after: a failure cached here must not reach other tests."""
    _clear_dispatch_caches()
    yield
    _clear_dispatch_caches()
