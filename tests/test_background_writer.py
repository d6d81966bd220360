"""outputs.background: writing tasks run in order behind the run; their errors are not lost."""

from __future__ import annotations

import threading
import time

import pytest

from novomap.outputs.background import BackgroundWriter


def test_tasks_run_in_submission_order_on_another_thread_and_are_done_on_leaving():
    done: list[int] = []
    threads: set[str] = set()

    def task(i: int):
        def run() -> None:
            time.sleep(0.01 * (5 - i))  # the earlier tasks are the slower ones
            threads.add(threading.current_thread().name)
            done.append(i)

        return run

    with BackgroundWriter() as writer:
        for i in range(5):
            writer.submit(task(i))
    assert done == [0, 1, 2, 3, 4]
    assert threads and threading.current_thread().name not in threads


def test_a_failed_task_is_raised_on_leaving_after_the_others_ran():
    done: list[str] = []

    def fail() -> None:
        time.sleep(0.05)  # still running when the next task is handed over
        raise OSError(28, "No space left on device", "run_it010_state.pt")

    with pytest.raises(OSError, match="No space left"):
        with BackgroundWriter() as writer:
            writer.submit(fail)
            writer.submit(lambda: done.append("after"))
    assert done == ["after"]


def test_a_failed_task_is_raised_at_the_next_submit():
    writer = BackgroundWriter()
    writer.submit(lambda: 1 / 0)
    time.sleep(0.05)
    with pytest.raises(ZeroDivisionError):
        writer.submit(lambda: None)
    writer.close()


def test_the_runs_own_error_is_not_masked_and_the_files_are_still_written():
    done: list[str] = []
    with pytest.raises(KeyError):
        with BackgroundWriter() as writer:
            writer.submit(lambda: (time.sleep(0.05), done.append("checkpoint")))
            writer.submit(lambda: 1 / 0)
            raise KeyError("the run failed")
    assert done == ["checkpoint"]
