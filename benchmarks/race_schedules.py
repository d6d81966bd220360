"""Would a shorter race of random starts choose as well? (issue "Speed": the race is a third of the real job)

The job races config.starts() random starts (vdam.restarts): at iteration 10 (per 100) the best two
by C1 log likelihood go on, at iteration 30 the better one scored symmetrised by the job's group.
This script runs one job's race with full information: the job's own command line up to its first
iteration, then every contender (made as the job makes them: own seed, own initial map, own
mini-batch order) to the last checkpoint, recording

* at every checkpoint, all contenders' C1 scores, scored together (what a first round there sees);
* at every second-round checkpoint, for each pair that a first round at a first-round checkpoint
  would keep, the pair's scores symmetrised by the group (what a last round there sees, exactly);
* each contender's cc and FSC 0.5 to the truth after superposition (--truth), at the checkpoints
  of --truth-at;
* each contender's seconds per iteration.

A schedule (first round at r1 keeping 2, last round at r2) then replays from the record: which start
it picks, whether the job's schedule (10, 30) picks the same, and how good the pick's map is. The
contenders' trajectories do not depend on each other, so running them all longer changes nothing.

    python benchmarks/race_schedules.py --specimen adk_o --seeds 1 2 3 --json-dir DIR   # the suite's job, as bench_suite runs it
    python benchmarks/race_schedules.py --truth T.mrc --json out.json -- initial-model --i P.star --o DIR ... --seed 1
    python benchmarks/race_schedules.py --replay out1.json out2.json ...
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

FIRST_ROUND = (5, 7, 10)
LAST_ROUND = (15, 20, 25, 30)
JOB_SCHEDULE = (10, 30)


class RaceRecorded(Exception):
    """Raised once the race is recorded: the job itself stops there."""


def record_race(args_after: list[str], truth_path: str | None, truth_at: tuple[int, ...]) -> dict:
    """Run `novomap <args_after>` with the race replaced by the full-information recording."""
    import novomap.vdam.iterate as iterate
    from novomap.commands.main import main as novomap_main
    from novomap.vdam import restarts
    from novomap.vdam.iterate import run_iteration
    from novomap.vdam.start import initial_state

    record: dict = {"command": args_after}

    def full_race(state, particles, half, config, device, group=None):
        truth = None
        if truth_path:
            from calibrate_starts import to_truth, truth_on_grid

            truth = truth_on_grid(truth_path, particles)

        contenders = [state] + [initial_state(particles, restarts.start_config(config, s)) for s in range(1, config.starts())]
        seconds = [[] for _ in contenders]
        c1_scores, pair_scores, to_truth_rows = {}, {}, {}
        for checkpoint in sorted(set(FIRST_ROUND + LAST_ROUND)):
            for s, contender in enumerate(contenders):
                while contender.iteration < checkpoint:
                    t0 = time.perf_counter()
                    run_iteration(contender, particles, half, restarts.start_config(config, s), device)
                    seconds[s].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            c1_scores[checkpoint] = restarts.score_starts(contenders, particles, half, config, device)
            record.setdefault("score_seconds", {})[checkpoint] = time.perf_counter() - t0
            if checkpoint in LAST_ROUND:
                for r1 in FIRST_ROUND:
                    pair = tuple(restarts.ranked_starts(c1_scores[r1])[:2])  # in rank order, as the job scores them (the first start's noise)
                    key = f"{checkpoint}:{pair[0]},{pair[1]}"
                    if key not in pair_scores:
                        symmetrised = group if config.start_score_symmetrised else None
                        pair_scores[key] = restarts.score_starts([contenders[i] for i in pair], particles, half, config, device, symmetrised)
            if truth is not None and checkpoint in truth_at:
                rows = []
                for contender in contenders:
                    cc, fsc05 = to_truth(truth, contender.maps[0].float(), particles.pixel_size_a)
                    rows.append({"cc": round(cc, 4), "fsc05_a": round(fsc05, 2)})
                to_truth_rows[checkpoint] = rows
            print(f"  checkpoint {checkpoint}: C1 scores {[round(v, 2) for v in c1_scores[checkpoint]]}", flush=True)
        record.update(
            {
                "group": group.name if group is not None else "C1",
                "seed": config.seed,
                "n_starts": len(contenders),
                "c1_scores": c1_scores,
                "pair_scores": pair_scores,
                "to_truth": to_truth_rows,
                "seconds_per_iteration": seconds,
            }
        )
        raise RaceRecorded

    # the race from iteration 1, so that every checkpoint is seen (the contenders, one start each, race nothing)
    iterate.competition_iteration = lambda config: 1 if restarts.competition_rounds(config) else 0
    iterate.compete = full_race
    try:
        novomap_main(args_after)
    except RaceRecorded:
        return record
    raise SystemExit("the job finished without a race (one start, or fewer than 50 iterations?)")


def choice(record: dict, r1: int, r2: int) -> int | None:
    """The start a race with rounds (r1: keep 2 by C1 score) and (r2: keep 1 by the pair's symmetrised score) picks."""
    from novomap.vdam.restarts import ranked_starts

    c1 = {int(k): v for k, v in record["c1_scores"].items()}
    if r1 not in c1:
        return None
    pair = tuple(ranked_starts(c1[r1])[:2])
    scores = record["pair_scores"].get(f"{r2}:{pair[0]},{pair[1]}")
    if scores is None:
        return None
    return pair[ranked_starts(scores)[0]]


def race_seconds(record: dict, r1: int, r2: int) -> float:
    """Seconds the race adds to one start's run: the other starts to r1, the runner-up from r1 to r2
    (iteration times as recorded; scoring not counted)."""
    seconds = record["seconds_per_iteration"]
    others = sum(sum(s[:r1]) for s in seconds[1:])
    runner_up = sorted(sum(s[r1:r2]) for s in seconds)[len(seconds) // 2]  # a typical start's iterations r1+1..r2
    return others + runner_up


def replay(paths: list[Path]) -> None:
    schedules = [(r1, r2) for r1, r2 in itertools.product(FIRST_ROUND, LAST_ROUND)]
    print("| run | job's pick (10, 30) | " + " | ".join(f"({r1}, {r2})" for r1, r2 in schedules) + " |")
    print("|---|---|" + "---|" * len(schedules))
    same = {s: 0 for s in schedules}
    worse = {s: [] for s in schedules}
    for path in paths:
        record = json.loads(path.read_text())
        truth = {int(k): v for k, v in record.get("to_truth", {}).items()}
        final_truth = truth.get(max(truth)) if truth else None
        job = choice(record, *JOB_SCHEDULE)
        cells = []
        for s in schedules:
            pick = choice(record, *s)
            if pick == job:
                same[s] += 1
                cells.append("same")
                continue
            detail = f"{pick}"
            if final_truth is not None and pick is not None:
                gap = final_truth[pick]["cc"] - final_truth[job]["cc"]
                detail += f" (cc {gap:+.3f})"
                worse[s].append(gap)
            cells.append(detail)
        job_cell = f"{job}" + (f" (cc {final_truth[job]['cc']:.3f})" if final_truth else "")
        print(f"| {path.stem} | {job_cell} | " + " | ".join(cells) + " |")
    print()
    for s in schedules:
        secs = [race_seconds(json.loads(p.read_text()), *s) for p in paths]
        base = [race_seconds(json.loads(p.read_text()), *JOB_SCHEDULE) for p in paths]
        gaps = ", ".join(f"{g:+.3f}" for g in worse[s]) or "none"
        print(f"({s[0]}, {s[1]}): same pick {same[s]}/{len(paths)}; other picks' cc at the last checkpoint against the job's: {gaps}; "
              f"race iterations {sum(secs):.0f} s against {sum(base):.0f} s ({sum(secs) / max(sum(base), 1e-9):.2f}x)")


def suite_job(name: str, seed: int, threads: int, root: Path) -> tuple[list[str], Path, Path]:
    """(novomap arguments, working folder, truth map) of the suite's job for specimen `name`, seed `seed`
    (bench_suite.run_seed's command; the specimen's particles simulated and cached as there)."""
    import bench_suite
    from specimens import build_specimen, specimen_named

    if name == bench_suite.REAL_NAME:
        star, cwd, truth, symmetry, mask_a = bench_suite.REAL_PARTICLES / bench_suite.REAL_STAR, bench_suite.REAL_PARTICLES, bench_suite.REAL_TRUTH, "D2", 200.0
    else:
        built = build_specimen(specimen_named(name))
        cwd = bench_suite.simulate_specimen(built, built.specimen.n_particles, 7, root)
        star, truth, symmetry, mask_a = cwd / "particles.star", cwd / "truth.mrc", built.specimen.symmetry, built.mask_diameter_a
    job = root / "race" / f"{name}_seed{seed}"
    arguments = [
        "initial-model", "--i", str(star), "--o", str(job), "--iter", "100", "--particle-diameter", f"{mask_a:g}", "--sym", symmetry,
        "--preread", "--j", str(threads), "--seed", str(seed), "--quiet", "--no-report",
    ]
    return arguments, cwd, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--truth", default=None, help="truth map: each contender's cc and FSC 0.5 to it")
    parser.add_argument("--truth-at", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--json", type=Path, default=None, help="write the record here")
    parser.add_argument("--specimen", default=None, help="record the suite's job on this specimen (bench_suite's names)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", type=Path, default=Path("/tmp/novomap_suite"), help="the suite's work folder (simulated data)")
    parser.add_argument("--json-dir", type=Path, default=Path("."), help="with --specimen: records go to DIR/NAME_seedS.json")
    parser.add_argument("--replay", type=Path, nargs="+", default=None, help="replay schedules on recorded races")
    parser.add_argument("job", nargs=argparse.REMAINDER, help="-- then novomap's arguments (initial-model ...)")
    args = parser.parse_args()
    if args.replay:
        replay(args.replay)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    if args.specimen:
        for seed in args.seeds:
            arguments, cwd, truth = suite_job(args.specimen, seed, args.threads, args.root)
            out = args.json_dir / f"{args.specimen}_seed{seed}.json"
            command = [sys.executable, __file__, "--truth", str(truth), "--json", str(out.resolve()), "--", *arguments]
            print(f"== {args.specimen} seed {seed}", flush=True)
            subprocess.run(command, cwd=cwd, check=True, env=os.environ.copy())
        return
    job = args.job[1:] if args.job and args.job[0] == "--" else args.job
    started = time.perf_counter()
    record = record_race(job, args.truth, tuple(args.truth_at))
    record["wall_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(record)
    if args.json:
        args.json.write_text(text)
    print(f"recorded in {record['wall_s']} s" + (f" -> {args.json}" if args.json else ""))


if __name__ == "__main__":
    main()
