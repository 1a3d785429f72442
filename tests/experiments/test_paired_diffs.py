"""Paired per-seed differences in the sweep report: a row minus its reference on the seeds both
finished, the reference chosen by the row's ``vs`` (else the first row)."""
import math

import pytest

from experiments.paired_diffs import paired, paired_table, references_of, validate_references


def _runs(name, losses):
    return [{"row": name, "seed": s, "val_loss": v} for s, v in losses.items()]


def test_paired_uses_only_common_finite_seeds():
    a = {0: 1.0, 1: 2.0, 2: None, 3: 5.0}
    b = {0: 0.5, 1: 2.5, 2: 1.0, 4: 1.0, 3: math.nan}
    assert paired(a, b) == [(0, 0.5), (1, -0.5)]


def test_reference_defaults_to_first_row_and_honours_vs():
    assert references_of({"name": "a"}, "base") == ["base"]
    assert references_of({"name": "a", "vs": "b"}, "base") == ["b"]
    assert references_of({"name": "a", "vs": ["b", "base"]}, "base") == ["b", "base"]
    assert references_of({"name": "base"}, "base") == []


def test_validate_references_names_the_row_and_the_choices():
    rows = [{"name": "base"}, {"name": "a", "vs": "nope"}]
    with pytest.raises(ValueError, match=r"'a'.*vs='nope'.*\['base', 'a'\]"):
        validate_references(rows)
    with pytest.raises(ValueError, match="other rows"):
        validate_references([{"name": "base"}, {"name": "a", "vs": "a"}])
    validate_references([{"name": "base"}, {"name": "a", "vs": "base"}])
    validate_references([{"name": "base"}, {"name": "b"}, {"name": "a", "vs": ["base", "b"]}])
    with pytest.raises(ValueError, match="'a'.*vs=\\['base', 'x'\\]"):
        validate_references([{"name": "base"}, {"name": "a", "vs": ["base", "x"]}])


def test_paired_table_values_signs_and_counts():
    """Row b is lower than a on seeds 0 and 2, higher on 1; c pairs with the base by default and
    shares one seed with it; d has no common seed and is left out."""
    rows = [{"name": "a"}, {"name": "b", "vs": "a"}, {"name": "c"}, {"name": "d"}]
    by_row = {"a": _runs("a", {0: 1.50, 1: 1.60, 2: 1.40}),
              "b": _runs("b", {0: 1.45, 1: 1.62, 2: 1.30}),
              "c": _runs("c", {2: 1.45, 5: 9.0}),
              "d": _runs("d", {7: 1.0})}
    lines = paired_table(rows, by_row, lambda x: x["val_loss"], "T")
    body = [ln for ln in lines if ln.startswith("| b ") or ln.startswith("| c ")
            or ln.startswith("| d ")]
    # 95% CI: -0.0433 ± t(0.975, 2) * 0.0603 / sqrt(3) = -0.04333 ± 0.14974
    assert body[0] == ("| b | a | 0, 1, 2 | -0.0500 / +0.0200 / -0.1000 | "
                       "-0.0433 ± 0.0603 (3) | [-0.1931, +0.1064] | 2/3 | within noise |")
    assert body[1] == "| c | a | 2 | +0.0500 | +0.0500 (1) |  | 0/1 | one seed |"
    assert len(body) == 2 and lines[1] == "T"


def test_paired_table_empty_without_common_seeds():
    rows = [{"name": "a"}, {"name": "b"}]
    by_row = {"a": _runs("a", {0: 1.0}), "b": _runs("b", {1: 1.0})}
    assert paired_table(rows, by_row, lambda x: x["val_loss"], "T") == []

