"""The per-run result files of a sweep: one name per (row, seed), loaded grouped in row order."""
import json

from experiments.run_results import load_results, result_path


def test_load_results_follows_row_order_and_reads_what_result_path_names(tmp_path):
    for row, seed in (("b", 1), ("a", 0), ("b", 0), ("a[x]", 0)):
        with open(result_path(str(tmp_path), row, seed), "w") as f:
            json.dump({"row": row, "seed": seed}, f)
    assert result_path("d", "a", 3) == "d/a__s3.json"
    got = [(r["row"], r["seed"]) for r in load_results(str(tmp_path), ["b", "a[x]"])]
    assert got == [("b", 0), ("b", 1), ("a[x]", 0)]        # row order; glob characters escaped
    assert len(load_results(str(tmp_path))) == 4
    assert load_results(str(tmp_path), []) == []
