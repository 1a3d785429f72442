"""kernels_pallas.gpu_bench's report (CPU-safe: no GPU is timed): the ratio column and the
marker of a run stopped before every spec was timed (the script writes after each spec)."""
from kernels_pallas.gpu_bench import render


def _result(complete: bool) -> dict:
    machine = {"device_kind": "NVIDIA H200", "time": "t", "versions": {"jax": "x"},
               "load_avg": [1.0]}
    row = {"kernel": "pk_retrieval", "spec": "s", "dtype": "bfloat16", "tokens": 8,
           "bytes": 2e6, "ms": {"xla": 3.0, "pallas_gpu": 1.5}, "max_abs_diff": 0.0,
           "index_agreement": 1.0}
    return {"machine": machine, "peaks": {"matmul_tflops": 700.0, "copy_gbs": 4000.0},
            "reps": 3, "rows": [row], "complete": complete, "command": "c"}


def test_report_ratio_and_incomplete_marker():
    done, stopped = "\n".join(render(_result(True))), "\n".join(render(_result(False)))
    assert "| 3.000 | 1.500 | 2.00x |" in done      # XLA / Pallas of the same run
    assert "Incomplete run" in stopped and "Incomplete run" not in done
