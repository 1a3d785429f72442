"""Configs and CLI flags validated before anything runs: one ``error:`` line naming the field,
exit code 2, no traceback (experiments/train.py, experiments/generate.py)."""
import importlib
import os
import subprocess
import sys

import pytest

from experiments.overrides import apply_overrides, load_config, split_config_args
from seedjax.train.config_check import ConfigError, validate_config
from tests.train.cli_runner import run_clis
from tests.train.test_train import ROOT, _run_cli

# (CLI, args, substrings the one stderr line must contain)
TRAIN_CASES = [
    (["--config.model.foo=1"], ["'model.foo'", "allowed in model"]),
    (["--config.train.stepz=10"], ["'train.stepz'", "did you mean train.steps"]),
    (["--config.train.lr=-0.01"], ["train.lr=", "> 0"]),
    (["--config.train.grad_clip=-1"], ["train.grad_clip=", ">= 0"]),
    (["--config.train.keep_checkpoints=0"], ["train.keep_checkpoints=0", ">= 1"]),
    (["--config.train.steps=abc"], ["train.steps='abc'", "int"]),
    (["--config.sample.length=0"], ["sample.length=0", ">= 1"]),
    (["--config.sample.length=100"], ["sample.length=100", "max_seq_len"]),
    (["--config.sample.temperature=-1"], ["sample.temperature=", ">= 0"]),
    (["--config.train.lr_multipliers={'default': 'fast'}"], ["train.lr_multipliers.default"]),
    (["--config.train.lr_multipliers=oops{"], ["train.lr_multipliers=", "dict"]),
    (["--config.model.n_kv_heads=3"], ["model.n_kv_heads=3", "divide"]),
    (["--config.model.head_dim=0"], ["model.head_dim=0", ">= 1"]),
    (["--config.model.qk_norm=maybe"], ["model.qk_norm", "true or false"]),
    (["--config.mesh.shape={'dta': 2}"], ["mesh.shape.dta", "did you mean mesh.shape.data"]),
    (["--config.mesh.rules=nope"], ["mesh.rules='nope'", "fsdp_tp"]),
    (["--config", "configs/missing.py:smoke"], ["--config=", "no config file"]),
    (["--config", "configs/lm.py:huge"], ["--config=", "'huge' unknown", "smoke"]),
    (["--coordinator", "localhost:12345"], ["--num_processes", "--process_id"]),
    (["--coordinator", "localhost:1", "--num_processes", "2", "--process_id", "2"],
     ["--process_id=2", "0 .. 1"]),
    (["--workdirr=x"], ["workdirr"]),
]
GENERATE_CASES = [
    (["--num_samples", "0"], ["--num_samples=0", ">= 1"]),
    (["--step", "7"], ["step=7", "allowed: [2, 4]"]),
    (["--length", "0"], ["--length=0", ">= 1"]),
    (["--length", "100"], ["--length=100", "max_seq_len=64"]),
    (["--temperature", "-1"], ["--temperature=", ">= 0"]),
    (["--top_p", "1.5"], ["--top_p=1.5", "(0, 1]"]),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_corpus):
    """A 4-step smoke run set from the command line, including None-default fields."""
    workdir = tmp_path_factory.mktemp("run")
    proc = _run_cli(workdir, small_corpus, "--config.train.steps=4",
                    "--config.train.warmup_steps=1", "--config.train.checkpoint_every=2",
                    "--config.train.eval_every=100", "--config.model.n_kv_heads=2",
                    "--config.model.head_dim", "8")
    return workdir, proc


def _cli(module, args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT})


def test_bad_inputs_one_line_exit_2(trained, small_corpus, tmp_path):
    workdir, _ = trained
    base = ["--config", "configs/lm.py:smoke", "--workdir", str(tmp_path / "w"),
            f"--config.data.source={small_corpus}", "--nosample", "--noprogress"]
    jobs = [("experiments.train", base + args, want) for args, want in TRAIN_CASES]
    jobs += [("experiments.generate", ["--workdir", str(workdir), *args], want)
             for args, want in GENERATE_CASES]
    jobs.append(("experiments.generate", ["--workdir", str(tmp_path / "none")], ["--workdir"]))
    procs = run_clis([(m, a) for m, a, _ in jobs])
    bad = []
    for (module, args, want), p in zip(jobs, procs):
        lines = p["stderr"].strip().splitlines()
        ok = (p["rc"] == 2 and len(lines) == 1 and lines[0].startswith("error: ")
              and all(w in lines[0] for w in want) and "Traceback" not in p["stderr"])
        if not ok:
            bad.append(f"{module} {args[-2:]}: rc={p['rc']} stderr={p['stderr'][-400:]!r}")
    assert not bad, "\n".join(bad)
    assert not os.path.exists(tmp_path / "w" / "checkpoints")  # nothing ran


def test_none_default_fields_set_from_command_line(trained):
    workdir, proc = trained
    assert proc.returncode == 0, proc.stderr[-2000:]
    from seedjax.train.restore import load_model
    model, config, step = load_model(str(workdir))
    assert step == 4 and config.model.n_kv_heads == 2 and config.model.head_dim == 8
    assert model.cfg.kv_heads == 2 and model.cfg.resolved_head_dim == 8
    out = _cli("experiments.generate", ["--workdir", str(workdir), "--length", "8",
                                        "--step", "2"])
    assert out.returncode == 0 and "[checkpoint step 2]" in out.stdout, out.stderr[-2000:]
    # back to None, a dict field, a key inside a kwargs dict, and the space-separated form
    _, found = split_config_args(["--config.model.n_kv_heads=None", "--config.train.lr",
                                  "2e-3", "--config.train.lr_multipliers={'default': 2.0}",
                                  "--config.model.ffn_kwargs.gated=1", "--noprogress"])
    cfg = load_config("configs/lm.py:smoke", found)
    assert cfg.model.n_kv_heads is None and cfg.train.lr == 2e-3
    assert cfg.train.lr_multipliers.to_dict() == {"default": 2.0}
    assert cfg.model.ffn_kwargs.gated == 1


def test_every_repo_config_and_sweep_row_validates():
    """No false alarms: every variant and sweep row of the repo's configs passes."""
    sys.path.insert(0, ROOT)
    names = ["configs.lm", "configs.memory_tasks"] + [
        "configs.papers." + f[:-3] for f in sorted(os.listdir(os.path.join(ROOT, "configs/papers")))
        if f.endswith(".py") and f not in ("__init__.py", "common.py")]
    n = 0
    for name in names:
        mod = importlib.import_module(name)
        variants = getattr(mod, "VARIANTS", None) or (
            tuple(getattr(mod, "TASK_SIZES", {})) + tuple(getattr(mod, "FACTS", {})))
        for variant in variants:
            cfg = mod.get_config(variant)
            validate_config(cfg)
            rows = mod.get_sweep(variant) if hasattr(mod, "get_sweep") else []
            for row in rows:
                validate_config(apply_overrides(cfg, row.get("overrides", {})))
            n += 1 + len(rows)
    assert n > 50
    cfg = load_config("configs/lm.py:smoke")
    with pytest.raises(ConfigError, match="train.keep_checkpoints=0"):
        validate_config(apply_overrides(cfg, {"train.keep_checkpoints": 0}))
    with pytest.raises(ConfigError, match="sample.top_p"):
        validate_config(apply_overrides(cfg, {"sample.top_p": 0.0}))
