"""Crossing step of a loss curve: the first logged step at or below the threshold, per row and
seed, with 'not by N' for runs that stay above (experiments.curve_crossing)."""
import json

import pytest

from experiments.curve_crossing import crossing_table, first_crossing, load_runs


def test_first_crossing_is_the_first_step_at_or_below():
    curve = [[50, 2.0], [100, 1.6], [150, 1.5], [200, 1.2], [250, 1.6]]
    assert first_crossing(curve, 1.5) == 150      # equality counts
    assert first_crossing(curve, 1.55) == 150
    assert first_crossing(curve, 2.0) == 50
    assert first_crossing(curve, 1.0) is None     # never reached


def _run(row, seed, losses):
    return {"row": row, "seed": seed, "train_curve": [[50 * (i + 1), v] for i, v in enumerate(losses)]}


def test_table_reports_each_seed_the_mean_over_crossed_and_not_by():
    results = [_run("fast", 1, [2.0, 1.0]), _run("fast", 0, [1.0, 0.9]),
               _run("slow", 0, [2.0, 2.0, 1.4]), _run("slow", 1, [2.0, 2.0, 1.9])]
    table = crossing_table(results, 1.5)
    lines = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    # seeds sorted; mean over the two crossed seeds of 'fast' = 75 ± 35
    assert lines["| fast"] == "| fast | 0,1 | 50 / 100 | 75 ± 35 (2) | 2/2 |"
    assert lines["| slow"] == "| slow | 0,1 | 150 / not by 150 | 150 (1) | 1/2 |"


def test_table_order_and_bad_input_errors():
    results = [_run("a", 0, [1.0]), _run("b", 0, [1.0])]
    table = crossing_table(results, 1.5, rows=["b", "a"])
    assert table.index("| b |") < table.index("| a |")
    with pytest.raises(ValueError, match=r"\['c'\] have no runs.*\['a', 'b'\]"):
        crossing_table(results, 1.5, rows=["c"])
    with pytest.raises(ValueError, match="curve"):
        crossing_table(results, 1.5, curve="loss")


def test_load_runs_reads_result_files(tmp_path):
    with pytest.raises(ValueError, match="no <row>__s<seed>.json"):
        load_runs(str(tmp_path))
    (tmp_path / "a__s0.json").write_text(json.dumps(_run("a", 0, [1.0])))
    assert [r["row"] for r in load_runs(str(tmp_path))] == ["a"]
