"""Atomic output: write to a temporary file beside the target, then rename over it.

A reader (or a killed run) never sees a half-written file, and inputs are never opened for writing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it is renamed to `path`.

    The temporary name keeps the target's suffix so that libraries choosing a format from the
    suffix (mrcfile, starfile) behave as for the real name.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; outputs get normal permissions
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as error:
        # name the file the user knows (a full disk while writing it), not the temporary one
        if error.filename is None or str(error.filename) == str(tmp):
            error.filename = str(target)
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
