"""A job folder holding several attempts of one run: the kept one in DIR itself, the others in DIR/attemptN.

When the evidence flags a wrong fold, `novomap initial-model` moves the attempt's files into
DIR/attempt1 and runs again from new random starts in DIR itself. The attempt kept is the one whose
map fits the particles best: its files are the job's own (DIR/run_itNNN_*, initial_model.mrc,
evidence.json, ...), so RELION and `novomap report` see one complete run, and every other attempt
keeps its files in the next free DIR/attemptN (the paths inside its STAR files still name DIR).
Files move by renames inside the job folder: nothing is copied, nothing is half-written.
"""

from __future__ import annotations

from pathlib import Path

#: What one attempt writes into its folder (the job's log, report and RELION files stay in DIR).
ATTEMPT_FILES = ("run_it*", "history.json", "initial_model.mrc", "evidence.json", "symmetry.txt")


def free_attempt_dir(out_dir: str | Path, prefix: str = "attempt") -> Path:
    """The first DIR/attemptN (N = 1, 2, ...; or another prefix) that does not exist yet: an attempt's
    files never overwrite another's."""
    number = 1
    while (Path(out_dir) / f"{prefix}{number}").exists():
        number += 1
    return Path(out_dir) / f"{prefix}{number}"


def attempt_files(folder: str | Path) -> list[Path]:
    """The files of the attempt in `folder` (ATTEMPT_FILES)."""
    folder = Path(folder)
    return sorted({path for pattern in ATTEMPT_FILES for path in folder.glob(pattern) if path.is_file()})


def move_attempt(source: str | Path, destination: str | Path) -> None:
    """Move the attempt files of `source` into `destination` (created; renames, same file system)."""
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for path in attempt_files(source):
        path.replace(destination / path.name)


def set_aside_earlier_run(out_dir: str | Path) -> Path | None:
    """Move the files of an earlier run in out_dir (ATTEMPT_FILES) into the first free DIR/previousN
    before a new run starts there -> that folder, or None when there were none.

    A new run overwrites only the iterations it writes: an earlier, longer run's run_it070_* would
    stay beside the new run_it006_*, and the report and `--continue` would take them for the new
    run's. Moved, not deleted: nothing is lost.
    """
    if not attempt_files(out_dir):
        return None
    destination = free_attempt_dir(out_dir, "previous")
    move_attempt(out_dir, destination)
    return destination
