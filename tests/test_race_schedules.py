"""benchmarks/race_schedules.py: replaying a recorded race under another schedule."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import race_schedules  # noqa: E402

from novomap.vdam import restarts
from novomap.vdam.config import VdamConfig


def _record() -> dict:
    # start 3 leads at iteration 5, starts 1 and 2 at 10; in the last round the pair's order matters
    return {
        "c1_scores": {"5": [-10.0, -9.0, -8.0, -1.0, -7.0], "10": [-10.0, -2.0, -1.0, -9.0, -8.0]},
        "pair_scores": {"30:2,1": [-5.0, -4.0], "30:3,4": [-3.0, -6.0], "20:2,1": [-4.0, -5.0]},
        "seconds_per_iteration": [[1.0] * 30 for _ in range(5)],
    }


def test_replayed_pick_follows_both_rounds():
    record = _record()
    # first round at 10 keeps (2, 1) in rank order; at 30 the second of them scores higher
    assert race_schedules.choice(record, 10, 30) == 1
    assert race_schedules.choice(record, 10, 20) == 2
    # first round at 5 keeps (3, 4); at 30 start 3 wins
    assert race_schedules.choice(record, 5, 30) == 3
    # a pair never scored at that checkpoint, or a first round never recorded: no pick
    assert race_schedules.choice(record, 5, 20) is None
    assert race_schedules.choice(record, 7, 30) is None


def test_pair_order_is_the_jobs_ranking():
    # the job scores its last round in rank order (the first survivor's noise spectrum serves both)
    scores = [-10.0, -2.0, -1.0, -9.0, -8.0]
    assert restarts.ranked_starts(scores)[:2] == [2, 1]
    config = VdamConfig(n_iter=100)
    assert restarts.competition_rounds(config)[-1][0] == race_schedules.JOB_SCHEDULE[1]
    assert restarts.competition_rounds(config)[0][0] == race_schedules.JOB_SCHEDULE[0]


def test_race_seconds_counts_the_other_starts_and_one_runner_up():
    record = _record()
    # (10, 30): 4 other starts x 10 iterations + one start's iterations 11-30
    assert race_schedules.race_seconds(record, 10, 30) == 40.0 + 20.0
    assert race_schedules.race_seconds(record, 5, 20) == 20.0 + 15.0


def test_replay_prints_a_row_per_record(tmp_path, capsys):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(_record()))
    race_schedules.replay([path])
    out = capsys.readouterr().out
    assert "| one | 1 |" in out
    assert "(10, 30): same pick 1/1" in out
