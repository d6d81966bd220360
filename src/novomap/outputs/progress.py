"""What a running job shows: a live progress display on a terminal, log lines elsewhere, and run.out/run.err.

RunLog is where every line goes: the terminal (unless quiet) and DIR/run.out (always); errors go to
stderr and DIR/run.err. When RELION runs the job it already sends stdout to run.out and stderr to
run.err; RunLog notices (same file) and does not write those lines twice.

ProgressDisplay turns the per-iteration figures of run_initial_model (its `progress` callback) into
  * on a terminal: a live bar (rich) with iteration, ETA, resolution, batch size, step size and sampling;
  * otherwise: one plain line per iteration;
  * in run.out: the same plain line, whatever the terminal shows.
The ETA counts particles, not iterations: mini-batches grow during a run, and a final pass assigns
every particle once, so time per particle (smoothed) times the particles still to come is the estimate.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from novomap.vdam import schedules
from novomap.vdam.config import VdamConfig
from novomap.vdam.restarts import competition_rounds

#: Weight of the newest iteration in the smoothed time per particle.
_SMOOTHING = 0.3
# seconds per particle of the final pass (a global search of the particles the last mini-batches missed,
# the polish of every pose, then the final reconstruction and the evidence) over those of the late
# iterations, whose narrowed searches of sharp particles the ETA learns: ~2.6 on the real tutorial job,
# ~4 at 20,000 and 40,000 simulated particles (benchmarks/results/2026-12-04-s34-new-user-data.md);
# with 1, the ETA showed 10 s where 40 s followed
FINAL_PASS_COST = 3.0


def batch_plan(config: VdamConfig, n_particles: int) -> list[int]:
    """Mini-batch size of iterations 1..n_iter (as vdam.iterate.run_iteration chooses them)."""
    phases = schedules.phases(config.n_iter, config.initial_fraction, config.final_fraction)
    initial, final = schedules.subset_sizes(n_particles, config.initial_subset, config.final_subset, config.final_subset_max_fraction)
    plan = [schedules.subset_size(i, phases, initial, final, n_particles) for i in range(1, config.n_iter + 1)]
    return with_race(plan, config, n_particles)


def with_race(plan: list[int], config: VdamConfig, n_particles: int) -> list[int]:
    """The plan with the race of random starts (vdam.restarts) added to its first round's iteration:
    the other starts' mini-batches up to each round, and the scoring of every start still racing."""
    rounds = competition_rounds(config)
    if not rounds:
        return plan
    plan = list(plan)
    extra, racing, previous = 0, config.starts(), 0
    for iteration, survivors in rounds:
        extra += (racing - 1) * sum(plan[previous:iteration]) + racing * min(n_particles, config.start_score_particles)
        racing, previous = survivors, iteration
    plan[rounds[0][0] - 1] += extra
    return plan


def race_notice(config: VdamConfig) -> tuple[int, str] | None:
    """(iteration, line): what run.out says after the iteration before the race of random starts
    (vdam.restarts), which then runs every start inside one iteration and prints nothing until it
    has chosen; None without a race."""
    rounds = competition_rounds(config)
    if not rounds:
        return None
    steps = ", ".join(f"the best {survivors} at iteration {iteration}" for iteration, survivors in rounds)
    return rounds[0][0] - 1, (
        f"next: {config.starts()} random starts race ({steps} go on); "
        f"nothing is printed until the race has chosen (the ETA includes it)"
    )


def format_duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _same_file(stream: TextIO, path: Path) -> bool:
    """True when `stream` already writes into `path` (e.g. RELION's `>> run.out` redirection)."""
    try:
        return path.exists() and os.path.samestat(os.fstat(stream.fileno()), os.stat(path))
    except (OSError, ValueError, AttributeError):  # no file descriptor (StringIO, pytest capture)
        return False


class RunLog:
    """Lines for the user: terminal (unless quiet) + DIR/run.out; errors: stderr + DIR/run.err."""

    def __init__(
        self,
        out_dir: str | Path | None,
        quiet: bool = False,
        verbose: bool = False,
        terminal: TextIO | None = None,
        errors: TextIO | None = None,
    ) -> None:
        self.quiet = quiet
        self.verbose = verbose
        self.terminal = terminal if terminal is not None else sys.stdout
        self.errors = errors if errors is not None else sys.stderr
        self.out_file: TextIO | None = None
        self.err_file: TextIO | None = None
        if out_dir is not None:
            out_dir = Path(out_dir)
            out_path, err_path = out_dir / "run.out", out_dir / "run.err"
            if not _same_file(self.terminal, out_path):
                self.out_file = open(out_path, "a", encoding="utf-8")
            if not _same_file(self.errors, err_path):
                self.err_file = open(err_path, "a", encoding="utf-8")

    @property
    def interactive(self) -> bool:
        """Whether the terminal stream is a TTY (a live display makes sense)."""
        try:
            return bool(self.terminal.isatty())
        except (AttributeError, ValueError):
            return False

    def to_file(self, line: str) -> None:
        if self.out_file is not None:
            self.out_file.write(line + "\n")
            self.out_file.flush()

    def to_terminal(self, line: str) -> None:
        if not self.quiet:
            self.terminal.write(line + "\n")
            self.terminal.flush()

    def info(self, line: str) -> None:
        """A line for the terminal (unless quiet) and run.out."""
        self.to_terminal(line)
        self.to_file(line)

    def detail(self, line: str) -> None:
        """A line for run.out always, and for the terminal with --verbose."""
        if self.verbose:
            self.to_terminal(line)
        self.to_file(line)

    def summary(self, line: str) -> None:
        """A line shown even with --quiet (the final result)."""
        self.terminal.write(line + "\n")
        self.terminal.flush()
        self.to_file(line)

    def error(self, text: str, to_stderr: bool = False) -> None:
        """Into run.err (and onto stderr when to_stderr; the dispatcher prints user errors itself)."""
        if not text.endswith("\n"):
            text += "\n"
        if to_stderr:
            self.errors.write(text)
            self.errors.flush()
        if self.err_file is not None:
            self.err_file.write(text)
            self.err_file.flush()

    def close(self) -> None:
        for handle in (self.out_file, self.err_file):
            if handle is not None:
                handle.close()
        self.out_file = self.err_file = None


def iteration_line(figures: dict, n_iter: int, eta: str | None = None, verbose: bool = False) -> str:
    """One plain line for an iteration's figures (see run_initial_model's progress callback)."""
    parts = [
        f"iter {figures['iteration']:4d}/{n_iter}",
        f"res {figures['resolution_a']:5.1f} Å",
        f"batch {figures['batch_size']:5d}",
        f"step {figures['step_size']:.2f}",
        f"T {figures['tau2_fudge']:.2f}",
        f"sampling {figures['fine_step_deg']:.2f}°",
        f"pmax {figures['average_pmax']:.2f}",
        f"{figures['seconds']:.1f} s",
    ]
    if eta is not None:
        parts.append(f"ETA {eta}")
    line = " | ".join(parts)
    if verbose:
        classes = ",".join(f"{fraction:.2f}" for fraction in figures.get("class_fraction", []))
        timings = " ".join(f"{name} {seconds:.2f}s" for name, seconds in figures.get("timings", {}).items())
        line += (
            f"\n      logL {figures['log_likelihood']:.4g} | acc rot {figures['acc_rot_deg']:.1f}° trans {figures['acc_trans_a']:.1f} Å"
            f" | sigma_offset {figures['sigma_offset_a']:.1f} Å | image {figures['current_size']} px (coarse {figures['coarse_size']})"
            f" | classes {classes} | {timings}"
        )
    return line


def starts_line(figures: dict) -> str:
    """One line for the race of random starts (vdam.restarts): each round's scores and the winner."""
    rounds = []
    for round_ in figures["start_rounds"]:
        scores = ", ".join(f"{start}: {score:.1f}" for start, score in zip(round_["starts"], round_["scores"]))
        symmetrised = f", maps symmetrised by {round_['scored_as']}" if round_.get("scored_as", "C1") != "C1" else ""
        rounds.append(f"iteration {round_['iteration']}{symmetrised} ({scores})")
    line = (
        f"random starts, mean log likelihood of the same particles: {'; '.join(rounds)} "
        f"-> continuing from start {figures['chosen_start']}"
    )
    carried = figures.get("finalist_starts", [])  # vdam.finalists
    if carried and "finalists_choice_at" in figures:  # a group of high order: carried whatever the lead
        line += (
            f"; {'start' if len(carried) == 1 else 'starts'} {', '.join(str(s) for s in carried)} go{'es' if len(carried) == 1 else ''} "
            f"on beside it to iteration {figures['finalists_choice_at']}, where the run whose half-sets agree best is kept "
            "(the fold of a particle of high symmetry forms after the race)"
        )
    elif len(carried) == 1:
        lead = figures["start_rounds"][-1].get("lead_z", 0.0)
        line += (
            f"; its lead over start {carried[0]} is {lead:.1f} standard errors, so that start goes on "
            "beside it to the last iteration, where the one whose half-sets agree better is kept"
        )
    elif carried:
        line += (
            f"; the particles cannot tell it clearly from starts {', '.join(str(s) for s in carried)}, so they go on beside it; "
            "later those whose half-sets agree best go on, and at the last iteration the best one"
        )
    return line


def pruned_line(record: dict) -> str:
    """One line for a cut of the run and the race's runners-up to the runs that go on (vdam.finalists.prune)."""
    agreements = ", ".join(f"{start}: {a:.3f}" for start, a in zip(record["starts"], record["pose_agreement"]))
    first, *others = record["kept"]
    beside = f"start {others[0]}" if len(others) == 1 else "starts " + ", ".join(str(s) for s in others)
    return (
        f"iteration {record['iteration']}: the run and the race's runners-up, half-sets at their poses agree (mean FSC; start: value) "
        f"{agreements} -> continuing from start {first}, with {beside} beside it"
    )


def finalists_line(record: dict) -> str:
    """One line for the choice between the run and the race's runner-up at n_iter, or half way with a group imposed (vdam.finalists)."""
    (leader, other), (a, b) = record["starts"], record["pose_agreement"]
    maps = "the same solution" if record["same_solution"] else "different solutions"
    return (
        f"the run (start {leader}) and the race's runner-up (start {other}): maps agree to {record['maps_agree_a']:.1f} Å "
        f"(runs at {record['resolution_a']:.1f} Å: {maps}); half-sets at their poses agree {a:.3f} and {b:.3f} (mean FSC) "
        f"-> continuing from start {record['chosen_start']}"
    )


class ProgressDisplay:
    """Per-iteration progress of a job: live on a terminal, plain lines otherwise, always into run.out.

    Use as a context manager; call update(figures) after every iteration and message()/stage() for
    other events. `mode`: "auto" (live on a TTY, else plain), "live", "plain" or "quiet".
    """

    def __init__(
        self,
        log: RunLog,
        n_iter: int,
        planned_batches: list[int] | None = None,
        final_pass_particles: int = 0,
        mode: str = "auto",
        config: VdamConfig | None = None,
    ) -> None:
        self.log = log
        self.race_notice = race_notice(config) if config is not None else None
        self.n_iter = n_iter
        self.planned = planned_batches
        self._plan = (n_iter, planned_batches)  # for restart()
        self.final_pass = final_pass_particles
        if log.quiet:
            mode = "quiet"
        elif mode == "auto":
            mode = "live" if log.interactive else "plain"
        self.mode = mode
        self.seconds_per_particle: float | None = None
        self.seconds_per_iteration: float | None = None
        self.started = time.perf_counter()
        self._progress = None
        self._task = None
        self._fallback_width = 0

    # -- context -------------------------------------------------------------------------
    def __enter__(self) -> "ProgressDisplay":
        if self.mode == "live":
            self._start_live()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _start_live(self) -> None:
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
            from rich.text import Text
        except ImportError:  # no rich: a carriage-return line
            self._progress = None
            return

        class TwoLines(Progress):
            """The bar on one line, what the job is doing on the next (fits 80 columns)."""

            status = ""

            def get_renderables(self):
                yield self.make_tasks_table(self.tasks)
                yield Text("  " + self.status)

        console = Console(file=self.log.terminal, force_terminal=True, highlight=False)
        self._progress = TwoLines(
            TextColumn("[bold]iter"),
            MofNCompleteColumn(),
            BarColumn(bar_width=24),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA [cyan]{task.fields[eta]}"),
            console=console,
            refresh_per_second=4,
        )
        self._progress.status = "starting"
        self._progress.start()
        self._task = self._progress.add_task("VDAM", total=self.n_iter, eta="?")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.status = "done"
            self._progress.update(self._task, eta="-")
            self._progress.stop()
            self._progress = None
        if self.mode == "live" and self._fallback_width:
            self.log.terminal.write("\n")
            self.log.terminal.flush()
            self._fallback_width = 0

    # -- estimates -----------------------------------------------------------------------
    def _learn(self, figures: dict) -> None:
        seconds = float(figures["seconds"])
        per_particle = seconds / max(int(figures["batch_size"]), 1)
        if self.seconds_per_particle is None:
            self.seconds_per_particle, self.seconds_per_iteration = per_particle, seconds
        else:
            self.seconds_per_particle += _SMOOTHING * (per_particle - self.seconds_per_particle)
            self.seconds_per_iteration += _SMOOTHING * (seconds - self.seconds_per_iteration)

    def eta_seconds(self, iteration: int) -> float | None:
        """Seconds left after `iteration` (iterations still to run, then the final pass)."""
        if self.seconds_per_particle is None:
            return None
        if self.planned is not None and len(self.planned) >= self.n_iter:
            particles = sum(self.planned[iteration:self.n_iter]) + FINAL_PASS_COST * self.final_pass
            return particles * self.seconds_per_particle
        return (self.n_iter - iteration) * self.seconds_per_iteration

    # -- events --------------------------------------------------------------------------
    def extend(self, last_iteration: int) -> None:
        """The run goes on to `last_iteration` (vdam.convergence), with the final mini-batch size."""
        if last_iteration <= self.n_iter:
            return
        if self.planned is not None and len(self.planned) >= self.n_iter and self.planned:
            self.planned = self.planned[: self.n_iter] + [self.planned[self.n_iter - 1]] * (last_iteration - self.n_iter)
        self.n_iter = last_iteration
        if self._progress is not None:
            self._progress.update(self._task, total=last_iteration)

    def restart(self, config: VdamConfig | None = None, n_particles: int = 0) -> None:
        """A new attempt of the run starts from iteration 0 (initial_model.run_initial_model): the plan as
        at the start, or that of the attempt's config (another class count races other starts)."""
        self.n_iter, self.planned = self._plan
        if config is not None and n_particles > 0:
            self.n_iter, self.planned = config.n_iter, batch_plan(config, n_particles)
            self.race_notice = race_notice(config)
        if self._progress is not None:
            self._progress.update(self._task, total=self.n_iter, completed=0, eta="?")
            self._progress.status = "starting again"

    def update(self, figures: dict) -> None:
        """After each iteration: figures as passed to run_initial_model's progress callback."""
        self._learn(figures)
        if "start_rounds" in figures:
            self.message(starts_line(figures))
        if "finalists_pruned" in figures:
            self.message(pruned_line(figures["finalists_pruned"]))
        if "finalists" in figures:
            self.message(finalists_line(figures["finalists"]))
        iteration = int(figures["iteration"])
        eta = format_duration(self.eta_seconds(iteration))
        plain = iteration_line(figures, self.n_iter, eta)
        self.log.to_file(iteration_line(figures, self.n_iter, eta, verbose=True) if self.log.verbose else plain)
        if self.mode == "plain":
            self.log.to_terminal(iteration_line(figures, self.n_iter, eta, verbose=self.log.verbose))
        elif self.mode == "live":
            info = (
                f"res {figures['resolution_a']:.1f} Å | batch {figures['batch_size']} | step {figures['step_size']:.2f} | "
                f"T {figures['tau2_fudge']:.2f} | sampling {figures['fine_step_deg']:.2f}°"
            )
            if self.log.verbose:
                self._print_above(iteration_line(figures, self.n_iter, eta, verbose=True))
            self._show(iteration, eta, info)
        if self.race_notice is not None and iteration == self.race_notice[0]:
            self.message(self.race_notice[1])

    def message(self, line: str) -> None:
        """A line for the terminal (above a live bar) and run.out."""
        self.log.to_file(line)
        if self.mode == "quiet":
            return
        if self.mode == "live":
            self._print_above(line)
        else:
            self.log.to_terminal(line)

    def stage(self, text: str) -> None:
        """What the job does now, between iterations (e.g. the final pass)."""
        self.message(text)
        if self.mode == "live" and self._progress is not None:
            self._progress.status = text
            self._progress.refresh()

    def _print_above(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            self._clear_fallback()
            self.log.to_terminal(line)

    def _show(self, iteration: int, eta: str, info: str) -> None:
        if self._progress is not None:
            self._progress.status = info
            self._progress.update(self._task, completed=iteration, eta=eta)
            self._progress.refresh()
            return
        line = f"iter {iteration}/{self.n_iter} | ETA {eta} | {info}"
        self._clear_fallback()
        self.log.terminal.write("\r" + line)
        self.log.terminal.flush()
        self._fallback_width = len(line)

    def _clear_fallback(self) -> None:
        if self._fallback_width:
            self.log.terminal.write("\r" + " " * self._fallback_width + "\r")
            self._fallback_width = 0
