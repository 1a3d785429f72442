"""Resume honesty and resume across optional optimizer settings: after kills and resumes
metrics.jsonl and TensorBoard hold each step once; toggling train.grad_clip resumes."""
import collections
import os
import signal

import jax
import optax
from flax import nnx

from seedjax.models import LM
from seedjax.train.loop import Trainer
from seedjax.train.metrics import read_events, read_metrics
from seedjax.train.optim import make_optimizer
from seedjax.train.state import abstract_model, param_labels
from tests.conftest import smoke_config
from tests.train.test_train import CFG, _run_cli


def _logged(workdir) -> tuple[list, list]:
    """(split, step) of every metrics.jsonl row; (tag, step) of every TensorBoard scalar."""
    rows = [(r["split"], r["step"]) for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))]
    tb = os.path.join(workdir, "tb")
    events = [(v.tag, e.step) for name in sorted(os.listdir(tb))
              for e in read_events(os.path.join(tb, name)) for v in e.summary.value]
    return rows, events


def test_kill_then_resume_with_clipping_off_logs_each_step_once(tmp_path, small_corpus):
    """SIGKILLed after logging steps its checkpoint does not hold, then resumed with
    train.grad_clip turned off: the run continues, and every (split, step) row and (tag, step)
    event appears once, at the steps an uninterrupted run logs. (Bitwise equality of a resumed
    run: test_train.test_resume_after_sigkill_is_bitwise_identical.)"""
    common = ["--config.train.steps=12", "--config.train.checkpoint_every=3",
              "--config.train.eval_every=4", "--config.train.log_every=2"]
    p = _run_cli(tmp_path, small_corpus, *common, "--config.train.debug_kill_at_step=5",
                 check=False)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    rows, _ = _logged(tmp_path)
    assert ("train", 4) in rows and ("val", 4) in rows  # after the checkpoint (3): re-run
    p = _run_cli(tmp_path, small_corpus, *common, "--config.train.grad_clip=0")
    assert "resumed from step 3" in p.stdout and "status: completed at step 12" in p.stdout
    rows, events = _logged(tmp_path)
    assert sorted(rows) == sorted([("train", s) for s in range(2, 13, 2)] +
                                  [("val", s) for s in (4, 8, 12)])
    assert not [k for k, n in collections.Counter(events).items() if n > 1]
    for tag, steps in (("train/loss", range(2, 13, 2)), ("val/loss", (4, 8, 12))):
        assert sorted(s for t, s in events if t == tag) == list(steps)
    train = {r["step"]: r for r in read_metrics(str(tmp_path / "metrics.jsonl"))
             if r["split"] == "train"}
    # each row says which steps it averages (first_step..step): a fresh run's first row starts
    # at 2; after the resume from 3 the row at 4 averages step 4 alone, untimed (compilation)
    assert [train[s]["first_step"] for s in sorted(train)] == [2, 4, 5, 7, 9, 11]
    assert "step_time_s" not in train[4] and "step_time_s" in train[6]


def test_optimizer_state_structure_ignores_grad_clip():
    """The clip slot is always present: clip_by_global_norm when on, identity when off, both
    with an empty state; so the saved tree is the same and nothing needs migrating."""
    abstract = abstract_model(lambda: LM(CFG, rngs=nnx.Rngs(0)))
    labels = param_labels(abstract)
    params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))  # shapes only
    states = [jax.eval_shape(make_optimizer({"lr": 1e-2, "steps": 10, "grad_clip": c,
                                             "lr_multipliers": m}, *labels)[0].init, params)
              for c, m in ((1.0, {}), (0.0, {}), (None, {}), (0.5, {"default": 2.0}))]
    assert len({jax.tree.structure(s) for s in states}) == 1
    assert all(isinstance(s[0], optax.EmptyState) for s in states)


def test_resume_with_clipping_turned_on_keeps_optimizer_state(tmp_path, small_corpus):
    """Off -> on: the resumed run restores the saved optimizer state as it is (Adam's step
    count keeps counting: not re-initialised) and finishes."""
    kw = dict(eval_every=100, log_every=2, warmup_steps=1)
    for steps, clip in ((2, 0.0), (4, 1.0)):
        t = Trainer(smoke_config(small_corpus, steps=steps, grad_clip=clip, **kw), str(tmp_path),
                    progress=False)
        summary = t.run()
        assert summary["status"] == "completed" and summary["step"] == steps
        assert int(t.state["opt_state"][1].count) == steps
        assert t.ckpt.read_meta(steps)["config"]["train"]["grad_clip"] == clip


def test_rerun_of_a_finished_run_reports_its_final_evaluation(tmp_path, small_corpus):
    """A run resumed at its final step (killed after the last checkpoint, before its caller
    read the summary) trains nothing and reports the same final val loss as the first run."""
    cfg = smoke_config(small_corpus, steps=2, eval_every=100, log_every=2, warmup_steps=1)
    first = Trainer(cfg, str(tmp_path), progress=False).run()
    again = Trainer(cfg, str(tmp_path), progress=False).run()
    assert again["status"] == "completed" and again["step"] == 2
    assert again["val"]["loss"] == first["val"]["loss"]
