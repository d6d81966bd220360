"""Output files written behind the run, on one worker thread, in the order they were handed over.

A checkpoint (run_itNNN_state.pt: ~13 MB for a 64-px map with its moments) took 14-120 ms to write
inside the real tutorial job, 0.76 s over its eleven checkpoints, although serialising it takes
~13 ms: the kernel holds back a process that writes while the page cache is busy with earlier
writes. The run hands the serialised bytes over and goes on computing; the worker waits in the
kernel instead (a file write releases Python's lock).

Each task runs whole before the next, so a checkpoint's files appear in the order the run wrote
them, each atomically (io.atomic). Leaving the `with` block waits for every task; the first error
of a task is raised there (or at the next `submit`), unless the block is already leaving on an
error of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class BackgroundWriter:
    """One worker thread that runs writing tasks (callables without arguments) in submission order."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []

    def submit(self, task: Callable[[], None]) -> None:
        """Run `task` after every task submitted before it; raises an earlier task's error first."""
        self._raise_finished()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="novomap-writer")
        self._pending.append(self._pool.submit(task))

    def wait(self) -> None:
        """Wait for every submitted task; raise the first error among them."""
        pending, self._pending = self._pending, []
        errors = [future.exception() for future in pending]
        first = next((error for error in errors if error is not None), None)
        if first is not None:
            raise first

    def _raise_finished(self) -> None:
        done = [future for future in self._pending if future.done()]
        self._pending = [future for future in self._pending if not future.done()]
        for future in done:
            if future.exception() is not None:
                raise future.exception()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:  # the files handed over are completed either way
            self.close()
        except Exception:
            if exc_type is None:  # the run's own error, if any, is the one that goes on
                raise
