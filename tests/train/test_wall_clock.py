"""Every run's wall time, from its process's start to its record, is in the record with its parts: time spent
outside training and validation (an ensemble's meta-learner once took minutes there) shows, and is named."""
import time

import pytest

import leantrain as lt
from leantrain.experiments.wall_report import wall_table
from leantrain.techniques import Technique
from tests.faults.helpers import tiny_data, tiny_model


class SlowEpochEnd(Technique):
    """Work at each epoch's end, outside the epoch's timed training and validation."""

    name = "slow-epoch-end"

    def on_epoch_end(self, state, record):
        time.sleep(0.3)


def test_the_record_holds_the_runs_wall_time_and_its_parts():
    record = lt.fit(tiny_model(), tiny_data(), epochs=2, batch_size=32, device="cpu", techniques=[SlowEpochEnd()])
    wall = record["run"]["wall"]
    parts = wall["parts_s"]
    assert parts["training"] == pytest.approx(sum(e["time_s"] for e in record["epochs"]), abs=1e-3)
    assert parts["validation"] == pytest.approx(sum(e["val_time_s"] for e in record["epochs"]), abs=1e-3)
    assert parts["compile"] == 0.0  # nothing compiled (test_compile.py: a compiled run's)
    assert parts["checkpoints_and_other"] >= 0.6  # the two slow epoch ends: no longer hidden
    assert {"process_group", "resolve", "build", "data", "probes", "prepare", "preflight", "record"} <= set(parts)
    # Whatever is named adds up to the wall time (each lap ends where the next begins).
    assert sum(parts.values()) + (wall["before_run_s"] or 0) == pytest.approx(wall["total_s"], abs=0.05)


def test_summary_shows_where_the_wall_time_went():
    def run(total, training):
        parts = {"data": 0.5, "probes": 0.0, "preflight": 1.0, "training": training, "validation": 0.1,
                 "meta_learner": 0.0, "checkpoints_and_other": 0.2, "record": 0.1, "build": 0.1}
        return {"run": {"wall": {"total_s": total, "before_run_s": 2.0, "parts_s": parts}}}

    lines = wall_table({"lean": [run(10.0, 6.0), run(12.0, 8.0)], "old": [{"run": {}}]})
    assert lines[2] == ("| recipe | wall (s) | before the run | data | auto probes | preflight | training | validation "
                        "| compile | meta-learner | checkpoints, logs | record | the rest |")
    # compile: 0.00, a record of a run that compiled nothing (or written before compile_s)
    assert lines[4] == "| lean | 11.0 | 2.0 | 0.50 | 0.00 | 1.00 | 7.00 | 0.10 | 0.00 | 0.00 | 0.20 | 0.10 | 0.10 |"
    assert len(lines) == 6  # a record written before these figures has no row
    assert wall_table({"old": [{"run": {}}]}) == []
