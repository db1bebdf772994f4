"""Where batches are sent from: the agent's sending threads, or the caller's own thread.

The forwarder hands each send to an ``Executor`` and settles it when its future is done.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future

from forwarder.sink import Delivery


class InlineExecutor(Executor):
    """Sends in the calling thread: a forwarder that is deterministic (tests, replay)."""

    def submit(  # type: ignore[override]
        self, fn: Callable[..., Delivery], /, *args: object, **kwargs: object
    ) -> Future[Delivery]:
        future: Future[Delivery] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class SenderThreads(Executor):
    """The sending threads of a running agent: daemon threads, so a request the server sits
    on never holds up the agent's exit (its batch is given back to the buffer instead).
    ThreadPoolExecutor's threads are joined at interpreter exit."""

    def __init__(self, n: int) -> None:
        self._work: queue.SimpleQueue[tuple[Future[Delivery], Callable[[], Delivery]] | None]
        self._work = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"send-{i}", daemon=True) for i in range(n)
        ]
        for t in self._threads:
            t.start()

    def submit(  # type: ignore[override]
        self, fn: Callable[..., Delivery], /, *args: object, **kwargs: object
    ) -> Future[Delivery]:
        future: Future[Delivery] = Future()
        self._work.put((future, lambda: fn(*args, **kwargs)))
        return future

    def _serve(self) -> None:
        while (job := self._work.get()) is not None:
            future, call = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for _ in self._threads:
            self._work.put(None)
        if wait:
            for t in self._threads:
                t.join()


def make_executor(max_in_flight: int) -> Executor:
    """The sending threads of a running agent."""
    return SenderThreads(max_in_flight)
