"""Runs many CLI invocations cheaply: imports jax/flax/orbax once, then forks a fresh process
per invocation (``python -m experiments.X args``, run via runpy). Used by the bad-input tables.

  run_clis([("experiments.train", [...args]), ...]) -> [{"rc": int, "stderr": str}, ...]
"""
import json
import os
import runpy
import subprocess
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_clis(jobs: list) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "tests.train.cli_runner"], cwd=ROOT,
                          input=json.dumps(jobs), capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_forked(module: str, args: list) -> dict:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: stderr into the pipe, stdout discarded, exit code as the CLI's
        os.close(r)
        os.dup2(w, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        sys.argv, code = [module, *args], 1
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        sys.stderr.flush()
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    return {"rc": os.waitstatus_to_exitcode(status), "stderr": err}


if __name__ == "__main__":
    import absl.app  # noqa: F401  (the heavy imports, done once before forking)
    import flax  # noqa: F401
    import jax  # noqa: F401
    import orbax.checkpoint  # noqa: F401

    import seedjax.train.config_check  # noqa: F401
    import seedjax.train.restore  # noqa: F401
    results = [_run_forked(m, a) for m, a in json.load(sys.stdin)]
    sys.stdout.write("\n" + json.dumps(results) + "\n")
