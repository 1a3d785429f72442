"""Runs ``python -m experiments.bench`` in-process for the benchmark tests: parses the argv on
absl's global FLAGS, calls ``main`` and always unparses them again (so the next test starts
clean)."""
from experiments import bench


def run_bench(*args: str) -> None:
    """``run_bench("memory", "--mem_d_model=64", ...)`` = ``python -m experiments.bench memory
    --mem_d_model=64 ...``."""
    try:
        bench.main(bench.FLAGS(["bench", *args]))
    finally:
        bench.FLAGS.unparse_flags()
