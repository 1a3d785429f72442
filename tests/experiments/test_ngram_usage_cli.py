"""experiments/ngram_usage.py: one table line per slice of every over-encoding row of a sweep,
with the numbers of ``seedjax.ops.ngram_usage.table_usage``."""
import numpy as np

from configs.papers import over_tokenized
from experiments.ngram_usage import usage_table


def test_usage_table_lists_every_slice_of_the_over_encoding_rows():
    base = over_tokenized.get_config("smoke")
    rows = over_tokenized.get_sweep("smoke")
    tokens = np.random.default_rng(0).integers(1, 256, 5000)
    lines = usage_table(base, rows, tokens)
    body = [line for line in lines[2:]]
    assert not any(line.startswith("| baseline ") for line in body)        # not over-encoding
    oe23 = [line for line in body if line.startswith("| oe23_k4 |")]
    assert [line.split(" | ")[2] for line in oe23] == ["2"] * 4 + ["3"] * 4  # orders per slice
    multiple = [line for line in body if "multiple_of_V" in line][0]
    assert "| 4096 |" in multiple                                           # 16 V for bytes
