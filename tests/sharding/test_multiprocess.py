"""Multi-process evidence on one CPU host: real ``jax.distributed`` runs over 127.0.0.1 (gloo).

* Two processes x 1 CPU device train the smoke LM through the CLI and give bit-identical
  metrics, checkpointed parameters and validation loss to one process x 2 devices with the same
  global batch; the 2-process checkpoint then resumes in a single process and matches an
  uninterrupted single-process run bit for bit.
* Two processes see disjoint halves of each global batch whose concatenation in process order
  is exactly the single-process batch (rows, order and all), and ``global_batch`` refuses a mesh
  that does not split the batch across processes.

Why bitwise and not a tolerance: with the same total device count and mesh, each device gets
the same rows (``seedjax.data`` hands process ``p`` the contiguous rows ``[p*B/P, (p+1)*B/P)``),
every process compiles the same per-device HLO, and the only cross-device reductions are
all-reduces over 2 participants, i.e. one IEEE addition ``a + b`` whether done by XLA's
in-process CPU collectives or by gloo. (With more than two participants the two
implementations may associate the sum differently; then expect ~1 ulp differences.)

Each child gets its own ``XLA_FLAGS=--xla_force_host_platform_device_count`` (overriding the 8
devices of conftest), a free port from the bind-to-0 trick, and a deadline: a hang or a crashed
peer fails the test and every child is killed. The training test gives its children a fresh
XLA compilation cache (the resumed run reuses the single-process run's executables; the
1-process and 2-process runs compile separately, their topologies differ).
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_S = 180
TIMING_KEYS = {"step_time_s", "tokens_per_s", "tflops_per_device", "mfu", "eval_time_s"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(n_devices: int, cache_dir=None) -> dict:
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                   os.environ.get("XLA_FLAGS", "")).strip()
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={n_devices}".strip()}
    if cache_dir is not None:  # XLA compilation is most of a smoke run's time on CPU
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    return env


# Model families of the 2-process test: (config, whether it reads the text corpus). The LM runs
# in the default suite; the looped LM (Ouro stack, Stage I objective) and the Race-DiT (image
# task, Expert Race threshold in the train state, params EMA) behind ``slow``.
FAMILIES = {"lm": ("configs/lm.py:smoke", True),
            "looped": ("configs/papers/ouro.py:smoke", True),
            "race_dit": ("configs/papers/race_dit.py:smoke", False)}


def _train_cmd(workdir, corpus, steps, family="lm"):
    # min_lr_ratio=1: constant lr after warmup, so the schedule of a 4-step run is the first half
    # of an 8-step run's and a run can be extended by resuming with a larger train.steps.
    config, text = FAMILIES[family]
    return [sys.executable, "-m", "experiments.train", "--config", config,
            "--workdir", str(workdir), *([f"--config.data.source={corpus}"] if text else []),
            "--nosample", "--noprogress", f"--config.train.steps={steps}",
            "--config.train.min_lr_ratio=1.0", "--config.train.warmup_steps=2",
            "--config.train.log_every=2", "--config.train.eval_every=4",
            "--config.train.checkpoint_every=4"]


def _distributed(cmd, port, n_proc=2):
    return [(cmd + ["--coordinator", f"127.0.0.1:{port}", "--num_processes", str(n_proc),
                    "--process_id", str(i)]) for i in range(n_proc)]


def _run_all(jobs, timeout=TIMEOUT_S, cache_dir=None):
    """Runs ``[(name, argv, n_devices), ...]`` concurrently; returns {name: stdout}.

    Fails (killing every child) as soon as one exits non-zero or when the deadline passes: a
    process whose peer died would otherwise wait in a collective for a long time. Output goes
    to temporary files, so a chatty child cannot block on a full pipe.
    """
    procs, files, done = {}, {}, {}

    def read(name):
        out, err = files[name]
        out.seek(0)
        err.seek(0)
        return out.read().decode(errors="replace"), err.read().decode(errors="replace")

    try:
        for name, argv, n_dev in jobs:
            files[name] = (tempfile.TemporaryFile(), tempfile.TemporaryFile())
            procs[name] = subprocess.Popen(argv, cwd=ROOT, env=_env(n_dev, cache_dir),
                                           stdout=files[name][0], stderr=files[name][1])
        deadline = time.monotonic() + timeout
        while len(done) < len(procs):
            for name, p in procs.items():
                if name in done or p.poll() is None:
                    continue
                out, err = read(name)
                assert p.returncode == 0, (f"{name} exited {p.returncode}\n--- stdout\n"
                                           f"{out[-3000:]}\n--- stderr\n{err[-3000:]}")
                done[name] = out
            if time.monotonic() > deadline:
                running = sorted(set(procs) - set(done))
                raise AssertionError(f"timeout after {timeout}s; still running: {running}; "
                                     + "; ".join(f"{n} stderr: {read(n)[1][-1500:]}"
                                                 for n in running))
            time.sleep(0.1)
        return done
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for out, err in files.values():
            out.close()
            err.close()


def _metrics(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS and not k.endswith("_per_s")}
            for r in rows]


def _params(workdir, step):
    from seedjax.train.restore import load_model
    model, _, got = load_model(str(workdir), step)
    assert got == step
    return jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))[0]


def _train_state(workdir, step):
    """Flattened EMA and model state (e.g. the Expert Race threshold) of a checkpoint; empty
    for runs that keep neither."""
    from seedjax.train.restore import load_run
    run = load_run(str(workdir), step, use_ema=None)
    extra = {"model_state": run.model_state or {}}
    if run.has_ema:
        extra["ema"] = run.params
    return jax.tree_util.tree_flatten_with_path(extra)[0]


def _assert_params_equal(a, b):
    assert [p for p, _ in a] == [p for p, _ in b]
    for (path, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                      err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("family", [
    "lm", pytest.param("looped", marks=pytest.mark.slow),
    pytest.param("race_dit", marks=pytest.mark.slow)])
def test_two_processes_train_like_one_and_resume_in_one(tmp_path, small_corpus, family):
    """2 procs x 1 device == 1 proc x 2 devices, bitwise; the 2-process checkpoint resumes in
    1 process and matches the uninterrupted single-process run at the end, bitwise (for the
    DiT also its EMA and Expert Race threshold: the whole checkpointed train state)."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    # A fresh compilation cache for this test only: the 1-process and 2-process runs compile
    # for different topologies (separate entries); it spares the resume run a recompilation.
    cache = tmp_path / "jax_cache"
    port = _free_port()
    res = _run_all([("single", _train_cmd(single, small_corpus, 8, family), 2)]
                   + [(f"proc{i}", argv, 1) for i, argv in
                      enumerate(_distributed(_train_cmd(multi, small_corpus, 4, family), port))],
                   cache_dir=cache)

    # process 0 reports, process 1 stays quiet; only process 0 wrote metrics and plots
    out0, out1 = res["proc0"], res["proc1"]
    assert "status: completed at step 4" in out0, out0
    assert "status:" not in out1 and "validation" not in out1, out1
    assert os.path.exists(multi / "loss.png")
    assert os.listdir(multi / "checkpoints") == ["4"]

    m_single, m_multi = _metrics(single), _metrics(multi)
    assert [(r["step"], r["split"]) for r in m_multi] == [(2, "train"), (4, "train"),
                                                          (4, "val")]
    assert m_multi == m_single[:3]  # loss, grad/param norms, lr, val loss: exactly equal
    _assert_params_equal(_params(multi, 4), _params(single, 4))
    _assert_params_equal(_train_state(multi, 4), _train_state(single, 4))

    # resume the 2-process checkpoint in one process with 2 devices, to step 8
    _run_all([("resume", _train_cmd(multi, small_corpus, 8, family), 2)], cache_dir=cache)
    # The first step after a resume is left out of the logged averages (compilation), so the
    # step-6 row averages step 6 only vs steps 5-6 uninterrupted; all other rows are the same.
    resumed = _metrics(multi)
    assert [(r["step"], r["split"]) for r in resumed] == [(r["step"], r["split"]) for r in m_single]
    assert resumed[:3] + resumed[4:] == m_single[:3] + m_single[4:]
    _assert_params_equal(_params(multi, 8), _params(single, 8))
    _assert_params_equal(_train_state(multi, 8), _train_state(single, 8))


_DATA_WORKER = r"""
import sys
import numpy as np
from seedjax.sharding.multihost import global_batch, maybe_initialize
corpus, port, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
multi = maybe_initialize(f"127.0.0.1:{port}", 2, pid, timeout_s=60)
assert multi
import jax
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P
from seedjax.data import build_lm_data
from seedjax.sharding.mesh import make_mesh

kw = dict(source=corpus, seq_len=32, batch_size=8, seed=3, max_val_batches=2)
mine = build_lm_data(**kw, process_index=pid, process_count=2)
ref = build_lm_data(**kw)  # what a single process would see
mesh, spec = make_mesh({"data": -1}), P(("data", "fsdp"))
assert mesh.devices.size == 4 and len(jax.local_devices()) == 2
batches = [(next(mine.train_iter), next(ref.train_iter)) for _ in range(3)]
batches += list(zip(mine.val_batches(), ref.val_batches()))
for local, full in batches:
    assert local["inputs"].shape == (4, 32)
    np.testing.assert_array_equal(local["inputs"], full["inputs"][4 * pid:4 * pid + 4])
    glob = global_batch(local, mesh, spec)
    assert glob["inputs"].shape == (8, 32)
    for k in ("inputs", "targets"):
        np.testing.assert_array_equal(multihost_utils.process_allgather(glob[k], tiled=True),
                                      full[k])
try:
    global_batch(local, make_mesh({"data": 1, "model": -1}), spec)
except ValueError as e:
    assert "distinct 1/2 of the batch" in str(e), e
else:
    raise AssertionError("a mesh replicating the batch across processes was accepted")
print("worker ok", pid)
"""


def test_two_processes_split_the_global_batch_in_order(small_corpus):
    port = _free_port()
    res = _run_all([(f"proc{i}", [sys.executable, "-c", _DATA_WORKER, small_corpus, str(port),
                                  str(i)], 2) for i in range(2)])
    for i in range(2):
        assert f"worker ok {i}" in res[f"proc{i}"]
