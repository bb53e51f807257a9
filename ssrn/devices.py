"""The torch device to run on, checked before any work: one clear error for a name that is not a device, or a
device this torch or machine does not have (shared by the trainer and the engine)."""

from __future__ import annotations

import os

import torch

from .errors import HSIEngineError

__all__ = ["DeviceError", "resolve_device"]


class DeviceError(HSIEngineError, ValueError):
    """A device name that is not a torch device, or a device this torch build or machine lacks."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` (default: cuda when available, else cpu), or :class:`DeviceError`
    saying what was asked for, what is there and what to pass instead."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"device {device!r} is not a torch device name; expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        shown = "" if hidden is None else f" (CUDA_VISIBLE_DEVICES={hidden!r} limits what it sees)"
        if not torch.cuda.is_available():
            hides_all = hidden is not None and hidden.strip() in ("", "-1")  # (a list may name GPUs not there)
            fix = ("use cpu (--device cpu, or leave the device out), or install a CUDA build of torch on a machine "
                   "with an NVIDIA GPU") if torch.version.cuda is None or not hides_all else (
                   "unset or widen CUDA_VISIBLE_DEVICES, or use cpu (--device cpu)")
            raise DeviceError(f"device {device!r} asked for, but this torch ({torch.__version__}) sees no CUDA "
                              f"device{shown}: {fix}")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise DeviceError(f"device {device!r} asked for, but this process sees {n} CUDA device(s){shown}: "
                              f"cuda:0 to cuda:{n - 1}")
    elif dev.type == "meta":  # torch.empty works there, and then every value read fails
        raise DeviceError(f"device {device!r} holds shapes, not values, so nothing can be trained or loaded on it; "
                          "expected cpu, cuda or cuda:N")
    elif dev.type != "cpu":
        try:
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError) as e:
            why = (str(e).splitlines() or [type(e).__name__])[0][:200]  # torch's lists every dispatch key
            raise DeviceError(f"device {device!r} is not usable here ({why}); expected cpu, cuda or cuda:N") from None
    return dev
