"""Errors that are the user's to fix: shown as one line, never as a traceback."""

from __future__ import annotations

from os import PathLike


class NovomapError(Exception):
    """An error with a message meant for the user (bad input, bad option, missing resource)."""


class InputError(NovomapError):
    """Bad input data; the message names the file, and where known the row and the label.

    `row` is 1-based over the data rows of a STAR table (the first particle is row 1).
    """

    def __init__(
        self,
        message: str,
        path: str | PathLike | None = None,
        row: int | None = None,
        label: str | None = None,
    ) -> None:
        self.path = None if path is None else str(path)
        self.row = row
        self.label = label
        where = []
        if self.path is not None:
            where.append(self.path)
        if row is not None:
            where.append(f"row {row}")
        if label is not None:
            where.append(label)
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a queue's time limit, `kill`): ends a job as Ctrl-C does, but exits 143 (128 + 15), as
    shells and queue systems expect of a terminated process (130 is Ctrl-C's)."""

    exit_code = 143
