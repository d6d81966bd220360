"""Where the suite stands: each specimen's latest recorded run per seed, gathered from every results file.

bench_suite.py writes one `results/DATE-suite-TAG.json` per batch of runs, and a batch covers a few
specimens and seeds with the code of its day. This script reads them all and keeps, for each
(specimen, seed), the most recent run made with the default options (no extra initial-model
arguments but today's defaults, 100 iterations, the specimen's own particle count and simulation seed), then prints per
specimen: the seeds covered, the ratio FSC 0.5 / true-pose bound (best, median, worst), wrong folds,
how many runs the job itself called WEAK (of those whose evidence was recorded), and which batches (labels, commits) the kept runs come from. Rows therefore mix code versions: a
batch is newer than another when it is dated later or, within a day, finished later (its "finished"
time, recorded since session 66; files without one come first, in name order).

    python benchmarks/suite_summary.py [--since 2026-12-01] [--results benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from specimens import specimen_named  # noqa: E402 - the specimens' own particle counts

RESULTS = Path(__file__).resolve().parent / "results"
# extra initial-model arguments that only spell out a default of today's code: `--finalists 4` became
# the default in session 54 (hb2_c1_40 seeds 10 and 12 were run with it before it was)
DEFAULT_EQUIVALENT_ARGS = {"", "--finalists 4"}
# seeds from here on are a job's later attempts run on their own (seed + 1,000,003: initial_model.retry_seed),
# not seeds of the suite (session 65: hb16_c1's second attempts)
FIRST_ATTEMPT_SEED_LIMIT = 1_000_000


def default_runs(path: Path) -> list[tuple[str, int, dict, str]]:
    """(specimen, seed, run, batch label) of one results file's runs made with the default options."""
    batch = json.loads(path.read_text())
    if (batch.get("extra_args") or "").strip() not in DEFAULT_EQUIVALENT_ARGS or batch.get("iter") != 100 or batch.get("sim_seed") != 7:
        return []
    commit = (batch.get("git") or {}).get("commit", "")[:7]
    label = f"{batch.get('label', path.stem)} ({commit or 'no commit'})"
    kept = []
    for specimen in batch["specimens"]:
        name = specimen["name"]
        try:
            own_count = specimen_named(name).n_particles if name != "real_betagal" else specimen["n_particles"]
        except KeyError:  # a specimen since renamed or dropped
            continue
        if specimen["n_particles"] != own_count:
            continue
        for run in specimen.get("runs", []):
            if run.get("ratio") is not None and int(run["seed"]) < FIRST_ATTEMPT_SEED_LIMIT:
                kept.append((name, int(run["seed"]), run, label))
    return kept


def batch_order(path: Path) -> tuple[str, str, str]:
    """Sort key of a results file: its date, then when its batch finished ("" when not recorded), then its name."""
    try:
        finished = json.loads(path.read_text()).get("finished") or ""
    except (OSError, ValueError):
        finished = ""
    return path.name[:10], finished, path.name


def latest_runs(results: Path, since: str) -> dict[str, dict[int, tuple[dict, str]]]:
    """{specimen: {seed: (run, batch label)}}: the latest default run of each seed, from files dated `since` on."""
    latest: dict[str, dict[int, tuple[dict, str]]] = {}
    for path in sorted(results.glob("*suite*.json"), key=batch_order):
        if path.name[:10] < since:
            continue
        for name, seed, run, label in default_runs(path):
            latest.setdefault(name, {})[seed] = (run, label)
    return latest


def summary_rows(latest: dict[str, dict[int, tuple[dict, str]]]) -> list[str]:
    rows = [
        "| specimen | seeds | ratio best / median / worst | worst FSC 0.5 Å | wrong folds | called WEAK | from batches |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in sorted(latest, key=lambda n: -max(run["ratio"] for run, _ in latest[n].values())):
        runs = latest[name]
        ratios = [run["ratio"] for run, _ in runs.values()]
        worst = max(runs.values(), key=lambda item: item[0]["ratio"])[0]
        seeds = sorted(runs)
        span = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ",".join(map(str, seeds))
        batches = sorted({label for _, label in runs.values()})
        wrong = sum(bool(run.get("wrong_fold")) for run, _ in runs.values())
        judged = [run for run, _ in runs.values() if "weak" in run]  # batches before session 30 recorded no evidence
        weak = f"{sum(bool(run['weak']) for run in judged)}/{len(judged)}" if judged else "-"
        rows.append(
            f"| {name} | {span} ({len(seeds)}) | {min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f} "
            f"| {worst['fsc05_a']:.1f} | {wrong}/{len(seeds)} | {weak} | {'; '.join(batches)} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--since", default="0000", help="only results files dated this day or later (YYYY-MM-DD)")
    args = parser.parse_args()
    print("\n".join(summary_rows(latest_runs(args.results, args.since))))


if __name__ == "__main__":
    main()
