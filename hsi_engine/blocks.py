"""Bounded cache of decoded scene blocks, so a chunk is decoded once for the tiles and halos that touch it.

A tile's window (tile plus halo) of a chunked store reaches into up to nine chunks, and every tile of a
chunk reads it again: without a cache a CPU tile of 128 in 128 x 128 chunks decodes each chunk nine times.
``BlockCache`` decodes a whole block (all bands of one spatial chunk) once, keeps the most recently used
ones in a fixed pool of slots allocated once (so long-lived blocks do not fragment the heap and the
process's memory stays at the pool's size), and copies windows out of them. Reader threads share it: a
block being decoded by one thread is waited for, not decoded again, and a slot being copied from is
pinned, never reused under a reader. Given a thread pool, the blocks of one window that no thread has yet
are decoded concurrently (the codecs release the GIL), so a reader is not bound by one core's decode speed.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future

import numpy as np

from .errors import OptionError

Block = tuple[int, int]


class BlockCache:
    """Windows ``(bands, ry1 - ry0, rx1 - rx0)`` of a chunked ``(band, y, x)`` source, cut from cached blocks.

    ``decode(y0, y1, x0, x1)`` returns one block's ``(bands, y1 - y0, x1 - x0)`` array; ``chunks`` are the
    source's ``(y sizes, x sizes)``; ``max_blocks`` slots are kept. A slot is pinned only while it is filled
    or copied from (at most one per reader and one per decoder thread); the pool grows past its size only when
    every slot is pinned at once, and then keeps that size. ``decoders``: a thread pool that decodes a
    window's missing blocks beside the calling thread (None: the calling thread decodes them one by one); the
    caller also decodes those of its jobs the pool has not started, so a pool shared with the callers cannot
    deadlock. Counters: ``decoded`` (blocks decoded) and ``hits`` (blocks served from the pool).
    """

    def __init__(self, decode: Callable[[int, int, int, int], np.ndarray],
                 chunks: tuple[Sequence[int], Sequence[int]], max_blocks: int, *,
                 decoders: Executor | None = None) -> None:
        if max_blocks < 1:
            raise OptionError(f"max_blocks must be >= 1, got {max_blocks}")
        self._decode = decode
        self._decoders = decoders
        self._ys = list(itertools.accumulate([0, *chunks[0]]))
        self._xs = list(itertools.accumulate([0, *chunks[1]]))
        self._block_shape = (max(chunks[0]), max(chunks[1]))
        self.max_blocks = int(max_blocks)
        self._lock = threading.Lock()
        self._slots: list[np.ndarray] = []
        self._pins: list[int] = []
        self._spare: list[int] = []  # slots whose fill failed: neither cached nor pinned, taken first
        self._where: collections.OrderedDict[Block, int] = collections.OrderedDict()  # LRU order, oldest first
        self._inflight: dict[Block, Future] = {}
        self.decoded = 0
        self.hits = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the slot pool."""
        return sum(s.nbytes for s in self._slots)

    def _span(self, starts: list[int], a: int, b: int) -> range:
        return range(bisect.bisect_right(starts, a) - 1, bisect.bisect_left(starts, b))

    def _free_slot(self, like: np.ndarray) -> int:
        """A slot to fill (lock held): a spare one (its fill failed), a new one while the pool is below its
        size, else the least recently used unpinned one; a new one past the size only when every slot is
        pinned."""
        if self._spare:
            return self._spare.pop()
        if len(self._slots) < self.max_blocks or all(self._pins):
            self._slots.append(np.empty((like.shape[0], *self._block_shape), dtype=like.dtype))
            self._pins.append(0)
            return len(self._slots) - 1
        for key, slot in self._where.items():
            if not self._pins[slot]:
                del self._where[key]
                return slot
        raise AssertionError("unreachable: an unpinned slot exists")

    def _shape(self, key: Block) -> tuple[int, int]:
        i, j = key
        return self._ys[i + 1] - self._ys[i], self._xs[j + 1] - self._xs[j]

    def _fill(self, key: Block, fut: Future) -> int:
        """Decode block ``key`` (marked in flight as ``fut`` by the caller) into a slot, returned pinned once
        for the caller; ``fut`` resolves when the block is in the pool, or carries the error to the waiters."""
        i, j = key
        slot = None
        try:
            arr = self._decode(self._ys[i], self._ys[i + 1], self._xs[j], self._xs[j + 1])
            h, w = self._shape(key)
            if arr.shape[1:] != (h, w):
                raise ValueError(f"block {key} decoded to {arr.shape[1:]} pixels, expected {(h, w)}")
            with self._lock:
                slot = self._free_slot(arr)
                self._pins[slot] += 1  # nobody can take it while it is being filled
            self._slots[slot][:, :h, :w] = arr
        except BaseException as e:  # waiters get the error instead of waiting for ever
            with self._lock:
                del self._inflight[key]
                if slot is not None:  # filled with nothing: the next fill takes it
                    self._pins[slot] -= 1
                    self._spare.append(slot)
                fut.set_exception(e)
            raise
        with self._lock:
            self._where[key] = slot
            del self._inflight[key]
            self.decoded += 1
            fut.set_result(None)
        return slot

    def _fill_released(self, key: Block, fut: Future) -> None:
        """A decoder's job: fill block ``key`` and leave it in the pool unpinned (its error reaches the caller
        through ``fut``)."""
        try:
            slot = self._fill(key, fut)
        except Exception:  # noqa: BLE001 - delivered through fut
            return
        self._release(slot)

    def _abandon(self, key: Block, fut: Future) -> None:
        """Give up a claim nobody will decode: waiters look again and decode the block themselves."""
        with self._lock:
            del self._inflight[key]
            fut.set_result(None)

    def _decode_claimed(self, keys: Sequence[Block]) -> dict[Block, Future]:
        """Claim the blocks of ``keys`` that are neither in the pool nor being decoded (other threads then wait
        for them instead of decoding them too) and decode them: all but one on the decoder pool, one here, then
        here again any of this call's jobs the pool has not started yet. Returns the claims' futures; no slot
        stays pinned for the caller."""
        owned: dict[Block, Future] = {}
        with self._lock:
            for key in keys:
                if key in self._where:  # newest first: the fills below must not evict what this window reads
                    self._where.move_to_end(key)
                elif key not in self._inflight:
                    owned[key] = self._inflight[key] = Future()
        todo = list(owned.items())
        jobs = []
        try:
            while len(todo) > 1:
                key, fut = todo[-1]
                jobs.append((self._decoders.submit(self._fill_released, key, fut), key, fut))
                todo.pop()
        except BaseException:  # the pool refused a job (shut down) or an interrupt: nobody decodes these
            for key, fut in todo:
                self._abandon(key, fut)
            raise
        if todo:
            self._fill_released(*todo[0])
        for job, key, fut in jobs:
            if job.cancel():  # still queued behind other readers' jobs: decode it here instead of idling
                self._fill_released(key, fut)
        return owned

    def _acquire(self, key: Block) -> int:
        """The slot of block ``key``, pinned (decoded here or by another thread): release it after use."""
        while True:
            with self._lock:
                slot = self._where.get(key)
                if slot is not None:
                    self._where.move_to_end(key)
                    self._pins[slot] += 1
                    self.hits += 1
                    return slot
                fut = self._inflight.get(key)
                owner = fut is None
                if owner:
                    fut = self._inflight[key] = Future()
            if not owner:
                fut.result()  # raises the owner's error; else the block is in the pool now: look again
                continue
            return self._fill(key, fut)

    def _release(self, slot: int) -> None:
        with self._lock:
            self._pins[slot] -= 1

    def __call__(self, ry0: int, ry1: int, rx0: int, rx1: int) -> np.ndarray:
        keys = [(i, j) for i in self._span(self._ys, ry0, ry1) for j in self._span(self._xs, rx0, rx1)]
        owned = self._decode_claimed(keys) if self._decoders is not None else {}
        out = None
        for key in keys:
            if key in owned:
                owned[key].result()  # wait for this call's own decode of it; its error is raised, not retried
            slot = self._acquire(key)
            try:
                i, j = key
                y0, y1 = max(ry0, self._ys[i]), min(ry1, self._ys[i + 1])
                x0, x1 = max(rx0, self._xs[j]), min(rx1, self._xs[j + 1])
                b = self._slots[slot]
                if out is None:
                    out = np.empty((b.shape[0], ry1 - ry0, rx1 - rx0), dtype=b.dtype)
                out[:, y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0] = \
                    b[:, y0 - self._ys[i]:y1 - self._ys[i], x0 - self._xs[j]:x1 - self._xs[j]]
            finally:
                self._release(slot)
        return out


__all__ = ["BlockCache"]
