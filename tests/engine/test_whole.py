"""run_whole: a step an exception from a signal handler must not cut half-way finishes, is cleaned up, and the
exception goes on."""

from __future__ import annotations

import _thread
import threading
import time

import pytest

from hsi_engine.whole import run_whole


def test_an_interrupted_step_finishes_is_cleaned_up_and_the_interruption_goes_on():
    finished, cleaned = [], []

    def step():
        time.sleep(0.6)
        finished.append(True)
        return "cluster"

    timer = threading.Timer(0.1, _thread.interrupt_main)  # a service's timeout, raised in this thread
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_whole(step, on_interrupted=cleaned.append)
    assert time.monotonic() - t0 >= 0.5  # waited for the step, which was not cut
    assert finished == [True] and cleaned == ["cluster"]


def test_a_step_s_own_result_and_error_come_back():
    assert run_whole(lambda: 42) == 42

    class Own(Exception):
        pass

    def fails():
        raise Own("named")

    with pytest.raises(Own, match="named"):
        run_whole(fails, on_interrupted=lambda v: pytest.fail("not interrupted"))
