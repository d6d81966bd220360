"""Where a finished job's time went, from its history.json (seconds summed over the iterations).

For each job folder: the seconds of the iterations up to the end of the race of random starts and
after it, each E-step phase (coarse pass, fine pass, back-projection, ...) summed over all
iterations, the race ("starts": every contender's iterations from the first round on, the winner's
included, and their scoring; then what it added beyond the winner's own iterations), and the share of
each mini-batch searched with narrowed translations (vdam.iterate.narrow_translations) at a few
iterations.

    python benchmarks/phase_times.py JOB_DIR [JOB_DIR ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RACE_END = 30  # the default race of starts ends at iteration 30 of 100


def phase_seconds(history: list[dict]) -> dict:
    totals: dict[str, float] = {}
    for figures in history:
        for name, seconds in figures.get("timings", {}).items():
            if isinstance(seconds, float):
                totals[name] = totals.get(name, 0.0) + seconds
    return totals


def summary(job: Path) -> str:
    history = json.loads((job / "history.json").read_text())
    early = sum(f["seconds"] for f in history if f["iteration"] <= RACE_END)
    late = sum(f["seconds"] for f in history if f["iteration"] > RACE_END)
    phases = ", ".join(f"{name} {seconds:.1f}" for name, seconds in phase_seconds(history).items() if seconds >= 0.5)
    narrow = " ".join(f"it{f['iteration']} {f.get('narrow_fraction', 0.0):.2f}" for f in history if f["iteration"] in (31, 50, 80, 100))
    return f"{job}: {len(history)} iterations; up to {RACE_END}: {early:.1f} s, after: {late:.1f} s; {race_extra(history)}phases (s): {phases}; narrowed share: {narrow}"


def race_extra(history: list[dict]) -> str:
    """What the race added to one start's run: its timing ("starts", the whole race) less the winner's own
    iterations from the first round to the race's end, which the history also counts. When another start
    than the run's first won, the history is the winner's, and the first start's iterations before the
    first round are in neither: the winner's own seconds up to the first round stand in for them (~)."""
    for figures in history:
        rounds = figures.get("start_rounds")
        if rounds and "starts" in figures.get("timings", {}):
            first, last = rounds[0]["iteration"], rounds[-1]["iteration"]
            extra = figures["timings"]["starts"] - sum(f["seconds"] for f in history if first < f["iteration"] <= last)
            approximate = figures.get("chosen_start", 0) != 0
            if approximate:
                extra += sum(f["seconds"] for f in history if f["iteration"] <= first)
            return f"race beyond the winner's own iterations: {'~' if approximate else ''}{extra:.1f} s; "
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jobs", nargs="+", type=Path)
    for job in parser.parse_args().jobs:
        print(summary(job))


if __name__ == "__main__":
    main()
