"""Fetch each training step's tensors one step ahead in a background thread, and move them to the device.

While step ``k`` runs on the device (or the CPU), a thread runs step ``k + 1``'s fetch: reading its batch,
and whatever else is drawn per step on the host. Steps are yielded in order and the fetch must be a pure
function of the step, so the data order is that of direct calls from any start step: a resumed run sees
the batches of the uninterrupted one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch


class _Failure:
    """An exception raised by the fetch, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def _map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], item: Any) -> Any:
    return tuple(fn(t) for t in item) if isinstance(item, tuple) else fn(item)


class Prefetcher:
    """Yield ``(step, fetch(step) on device)`` for each step of ``steps``, in order, with the fetch of the
    next ``depth`` steps running in a background thread meanwhile.

    ``fetch(step)`` returns a host tensor or a tuple of host tensors and must be a pure function of
    ``step`` (then the yielded sequence is that of direct calls, whatever ``steps.start``). On a CUDA
    ``device`` the thread pins what the fetch returned unpinned, and the consumer copies with
    ``non_blocking=True``: the copy is queued on the current stream behind the previous step's work and the
    host goes on. PyTorch's pinned-memory allocator keeps a block from reuse until the copies queued from
    it have finished, so every step's tensors can be freshly allocated and dropped. On the CPU the yielded
    tensors are those the fetch returned.

    Host memory in flight: up to ``depth + 2`` steps' tensors (queued, being fetched, held by the
    consumer); device memory: the step in use and the next one's copy.

    Leaving a ``with Prefetcher(...)`` block in any way (exhausted, ``break``, an exception,
    ``KeyboardInterrupt``, the ``SystemExit`` of a SIGTERM handler) stops and joins the thread, after at
    most the fetch in progress; so does closing or dropping the iterator. An exception in the fetch is
    raised in the consumer at the step it belongs to. ``wait_s``: seconds the consumer waited for data.
    """

    def __init__(self, steps: range, fetch: Callable[[int], Any], *, device: torch.device | str,
                 depth: int = 1) -> None:
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self.steps = steps
        self.device = torch.device(device)
        self.wait_s = 0.0
        self._fetch = fetch
        self._pin = self.device.type == "cuda"
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._started_iterating = False
        self._thread = threading.Thread(target=self._produce, name="ctdiff-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        """Queue ``item``, waiting while the queue is full; False when stopped meanwhile."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for step in self.steps:
                if self._stop.is_set():
                    return
                item = self._fetch(step)
                if self._pin:
                    item = _map_tensors(lambda t: t if t.is_pinned() else t.pin_memory(), item)
                if not self._put((step, item)):
                    return
        except BaseException as error:  # noqa: BLE001 - carried to the consumer and raised there
            self._put(_Failure(error))
            return
        self._put(_END)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        if self._started_iterating:
            raise RuntimeError("a Prefetcher can be iterated once")
        self._started_iterating = True
        try:
            while True:
                t0 = time.perf_counter()
                item = self._queue.get()
                self.wait_s += time.perf_counter() - t0
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                step, host = item
                del item
                yield step, _map_tensors(lambda t: t.to(self.device, non_blocking=True), host)
                del host
        finally:
            self.close()

    def close(self) -> None:
        """Stop the background thread and wait for it (at most the fetch in progress)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Prefetcher"]
