"""Every CLI under experiments/ turns an expected bad input (flag, config file or variant, row,
seed, task, run directory, checkpoint step, out-of-range number) into one ``error:`` line on
stderr naming the field, exit code 2, no traceback (issue 17).

In-process and fast: each case defines the CLI's flags on absl's global FLAGS (isolated per
case), parses argv as ``experiments.cli.run`` does and calls the CLI's ``main``. The ``python
-m`` entry points themselves (``__main__`` -> ``cli.run``) get one bad input each in one
subprocess. experiments/train.py and generate.py have their own table in
tests/train/test_config_validation.py. The other modules of experiments/ are libraries (no
``main``)."""
import contextlib
import importlib
import json

import pytest
from absl import flags
from absl.testing import flagsaver

from experiments import bench  # noqa: F401  (defines its flags on import, as test_bench_memory expects)
from experiments import cli
from tests.train.cli_runner import run_clis

# module -> (its flag-defining function, the keyword arguments its __main__ gives cli.run)
CLIS = {
    "experiments.reproduce": ("define_flags", {}),
    "experiments.memory_tasks": ("_define_flags", {"config_overrides": True}),
    "experiments.bench": (None, {"positional": True}),
    "experiments.compile_check": ("define_flags", {}),
    "experiments.cost_model": ("define_flags", {}),
    "experiments.curve_crossing": ("define_flags", {}),
    "experiments.diagnose_connections": ("define_flags", {}),
    "experiments.connection_trajectory": ("define_flags", {}),
    "experiments.diagnose_memory": ("_define_flags", {}),
    "experiments.diagnose_norms": ("define_flags", {}),
    "experiments.diagnose_race": ("define_flags", {}),
    "experiments.generate_looped": ("define_flags", {}),
    "experiments.looped_depth": ("define_flags", {}),
    "experiments.looped_kv": ("define_flags", {}),
    "experiments.ngram_usage": ("define_flags", {}),
}
SWEEP = "configs/papers/seednorm.py:smoke"
DIAG = ["--out", "{tmp}/diag"]

# (CLI, args, substrings the one stderr line must contain); {run}: a run directory whose only
# checkpoint is step 3, {runs}: a results directory with row "a" only, {tmp}: an empty folder
CASES = [
    ("reproduce", ["--out", "{tmp}/o"], ["--config"]),
    ("reproduce", ["--config", "configs/missing.py", "--out", "{tmp}/o"],
     ["--config=configs/missing.py", "no config file"]),
    ("reproduce", ["--config", "configs/papers/seednorm.py:huge", "--out", "{tmp}/o"],
     ["--config=", "'huge' unknown", "'smoke'"]),
    ("reproduce", ["--config", "{bad_config}", "--out", "{tmp}/o"], ["--config=", "cannot load"]),
    ("reproduce", ["--config", SWEEP, "--out", "{tmp}/o", "--rows", "nope"],
     ["--rows ['nope'] unknown", "rows: ["]),
    ("reproduce", ["--config", SWEEP, "--out", "{tmp}/o", "--seeds", "0,x"],
     ["--seeds='0,x'", "integers >= 0"]),
    ("reproduce", ["--config", SWEEP, "--out", "{tmp}/o", "--config.train.steps=2"],
     ["config.train.steps"]),
    ("memory_tasks", [], ["--workdir"]),
    ("memory_tasks", ["--workdir", "{tmp}"], ["--workdir", "no checkpoints/"]),
    ("memory_tasks", ["--workdir", "{run}", "--config", "configs/lm.py:huge"],
     ["--config=", "'huge' unknown", "'smoke'"]),
    ("memory_tasks", ["--workdir", "{run}", "--config", "configs/lm.py:smoke",
                      "--config.train.stepz=1"], ["'train.stepz'", "did you mean train.steps"]),
    ("memory_tasks", ["--workdir", "{run}", "--config.model.foo=1"],
     ["--config.model.foo", "needs --config"]),
    ("memory_tasks", ["--workdir", "{run}", "--tasks", "mqar,bogus"],
     ["--tasks='bogus'", "allowed", "'mqar'"]),
    ("memory_tasks", ["--workdir", "{run}", "--episodes", "0"], ["--episodes=0", ">= 1"]),
    ("memory_tasks", ["--workdir", "{run}", "--step", "7"], ["step=7", "allowed: [3]"]),
    ("bench", [], ["subcommand (none)", "'lm'", "'memory'"]),
    ("bench", ["train"], ["subcommand train:", "'looped'"]),
    ("bench", ["lm", "--variants", "smoke,huge"], ["--variants='huge'", "'tiny'"]),
    ("bench", ["lm", "--steps", "0"], ["--steps=0", ">= 1"]),
    ("bench", ["lm", "--stepz", "3"], ["stepz"]),
    ("bench", ["memory", "--mem_batches", "1,x"], ["--mem_batches='1,x'", ">= 1"]),
    ("bench", ["memory", "--mem_moe_top_k", "0"], ["--mem_moe_top_k=0", ">= 1"]),
    ("bench", ["memory", "--mem_d_model", "64", "--mem_ffn_dim", "8"],
     ["no memory shape", "--mem_ffn_dim"]),
    ("bench", ["looped", "--looped_repeats", "0"], ["--looped_repeats=0", ">= 1"]),
    ("compile_check", ["--schemes", "psum,bogus"], ["--schemes='bogus'", "'all_to_all'"]),
    ("compile_check", ["--chips", "v6"], ["--chips='v6'", "'v5e'"]),
    ("compile_check", ["--batch", "6"], ["--batch=6", "multiple of 4"]),
    ("compile_check", ["--capacity_factor", "-1"], ["--capacity_factor=-1", ">= 0"]),
    ("compile_check", [], ["JAX_PLATFORMS='cpu'", "unset it"]),  # conftest sets it
    ("cost_model", ["--preset", "v3"], ["--preset=v3", "v2_table4|worked_227m"]),
    ("cost_model", ["--batches", "1,0"], ["--batches='1,0'", ">= 1"]),
    ("cost_model", ["--bytes_per_param", "0"], ["--bytes_per_param=0", "> 0"]),
    ("cost_model", ["table4"], ["unexpected argument 'table4'"]),
    ("curve_crossing", ["--threshold", "1.5"], ["--runs"]),
    ("curve_crossing", ["--runs", "{tmp}", "--threshold", "1.5"],
     ["--runs", "no <row>__s<seed>.json"]),
    ("curve_crossing", ["--runs", "{runs}", "--threshold", "1.5", "--rows", "a,b"],
     ["rows ['b']", "rows with runs: ['a']"]),
    ("curve_crossing", ["--runs", "{runs}", "--threshold", "low"], ["--threshold=low"]),
    ("curve_crossing", ["--runs", "{runs}", "--threshold", "1", "--curve", "loss"],
     ["--curve=loss", "train_curve|val_curve"]),
    ("diagnose_connections", DIAG, ["--workdirs"]),
    ("diagnose_connections", ["--workdirs", "{run}", "--names", "a,b", *DIAG],
     ["--names has 2", "--workdirs has 1"]),
    ("diagnose_connections", ["--workdirs", "{run}", "--batches", "0", *DIAG],
     ["--batches", ">= 1"]),
    ("diagnose_connections", ["--workdirs", "{run}", "--max_tokens", "0", *DIAG],
     ["--max_tokens=0", ">= 1"]),
    ("diagnose_connections", ["--workdirs", "{tmp}", *DIAG], ["workdir", "no checkpoints/"]),
    ("diagnose_connections", ["--workdirs", "{run}", "--step", "7", *DIAG],
     ["step=7", "allowed: [3]"]),
    ("connection_trajectory", DIAG, ["--workdirs"]),
    ("connection_trajectory", ["--workdirs", "{run}"], ["--out is required"]),
    ("connection_trajectory", ["--workdirs", "{run}", *DIAG],
     ["keeps 1 checkpoint", "--config.train.keep_checkpoints"]),
    ("diagnose_memory", [], ["--workdir"]),
    ("diagnose_memory", ["--workdir", "{run}", "--batches", "0"], ["--batches", ">= 1"]),
    ("diagnose_memory", ["--workdir", "{run}", "--step", "7"], ["step=7", "allowed: [3]"]),
    ("diagnose_norms", DIAG, ["--workdirs"]),
    ("diagnose_norms", ["--workdirs", "{run},{run}", *DIAG], ["--names must be distinct"]),
    ("diagnose_norms", ["--workdirs", "{run}", "--step", "7", *DIAG], ["step=7", "allowed: [3]"]),
    ("diagnose_race", DIAG, ["--workdirs"]),
    ("diagnose_race", ["--workdirs", "{tmp}", *DIAG], ["workdir", "no checkpoints/"]),
    ("diagnose_race", ["--workdirs", "{run}", "--names", "a,b", *DIAG],
     ["--names has 2", "--workdirs has 1"]),
    ("diagnose_race", ["--workdirs", "{run}", "--levels", "0", *DIAG], ["--levels=0", ">= 1"]),
    ("diagnose_race", ["--workdirs", "{run}", "--step", "7", *DIAG], ["step=7", "allowed: [3]"]),
    ("diagnose_race", ["--workdirs", "{run}", "--params", "best", *DIAG],
     ["--params=best", "<auto|ema|params>"]),
    ("looped_depth", DIAG, ["--workdirs"]),
    ("looped_depth", ["--workdirs", "{run}", "--max_loops", "0", *DIAG], ["--max_loops", ">= 1"]),
    ("looped_depth", ["--workdirs", "{run}", "--step", "7", *DIAG], ["step=7", "allowed: [3]"]),
    ("looped_kv", DIAG, ["--workdirs"]),
    ("looped_kv", ["--workdirs", "{run}", "--q", "1.5", *DIAG], ["--q=1.5", "(0, 1]"]),
    ("looped_kv", ["--workdirs", "{run}", "--q", "x", *DIAG], ["--q=x", "(0, 1]"]),
    ("looped_kv", ["--workdirs", "{tmp}", *DIAG], ["workdir", "no checkpoints/"]),
    ("ngram_usage", [], ["--config is required"]),
    ("ngram_usage", ["--config", "configs/papers/over_tokenized.py:smoke", "--rows", "nope"],
     ["--rows ['nope'] are not in the sweep"]),
    ("ngram_usage", ["--config", "configs/papers/over_tokenized.py:smoke", "--tokenizer",
                     "{tmp}/none.json"], ["--tokenizer", "does not exist"]),
    ("generate_looped", ["--prompt", "a"], ["exactly one of --checkpoint", "--workdir"]),
    ("generate_looped", ["--workdir", "{run}", "--prompt", "a", "--top_p", "0"],
     ["--top_p=0.0", "(0, 1]"]),
    ("generate_looped", ["--workdir", "{run}", "--prompt", "a", "--kv_policy", "x"],
     ["--kv_policy=x", "full_per_depth"]),
    ("generate_looped", ["--workdir", "{run}", "--prompt", "a", "--step", "7"],
     ["step=7", "allowed: [3]"]),
]

# through ``python -m`` (the __main__ wiring): one bad input per CLI, train and generate included
MAIN_CASES = [
    ("reproduce", ["--out", "{tmp}/o"], ["--config"]),
    ("memory_tasks", ["--workdir", "{run}", "--config.model.foo=1"], ["needs --config"]),
    ("bench", ["lm", "--stepz", "3"], ["stepz"]),
    ("compile_check", ["--chips", "v6"], ["--chips='v6'"]),
    ("cost_model", ["--preset", "v3"], ["--preset=v3"]),
    ("curve_crossing", ["--threshold", "1.5"], ["--runs"]),
    ("diagnose_connections", ["--workdirs", "{tmp}", *DIAG], ["no checkpoints/"]),
    ("connection_trajectory", ["--workdirs", "{run}", *DIAG], ["keeps 1 checkpoint"]),
    ("diagnose_memory", ["--workdir", "{run}", "--step", "7"], ["allowed: [3]"]),
    ("diagnose_norms", DIAG, ["--workdirs"]),
    ("diagnose_race", ["--workdirs", "{run}", "--step", "7", *DIAG], ["allowed: [3]"]),
    ("generate_looped", ["--prompt", "a", "extra"], ["unexpected argument 'extra'"]),
    ("looped_depth", DIAG, ["--workdirs"]),
    ("looped_kv", ["--workdirs", "{run}", "--q", "0", *DIAG], ["--q=0.0", "(0, 1]"]),
    ("ngram_usage", [], ["--config is required"]),
    ("train", ["--config", "configs/lm.py:huge", "--workdir", "{tmp}/w"], ["'huge' unknown"]),
    ("generate", ["--workdir", "{run}", "--step", "7"], ["allowed: [3]"]),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict:
    """{run}: a run directory whose checkpoints/ lists step 3 only (enough to name the allowed
    steps; nothing is restored), {runs}: a results directory with one run of row "a", {tmp}: an
    empty folder, {bad_config}: a config file with a syntax error."""
    root = tmp_path_factory.mktemp("cli_errors")
    step = root / "run" / "checkpoints" / "3"
    step.mkdir(parents=True)
    (step / "_CHECKPOINT_METADATA").write_text("{}")
    (root / "runs").mkdir()
    (root / "runs" / "a__s0.json").write_text(json.dumps(
        {"row": "a", "seed": 0, "train_curve": [[1, 2.0], [2, 1.0]]}))
    (root / "empty").mkdir()
    (root / "bad.py").write_text("def get_config(:\n")
    return {"run": str(root / "run"), "runs": str(root / "runs"), "tmp": str(root / "empty"),
            "bad_config": str(root / "bad.py")}


@contextlib.contextmanager
def isolated_flags(module: str):
    """absl's global FLAGS holding only absl's own flags and those ``module`` defined on import
    (other CLIs define the same names, e.g. --out), as a fresh process would; everything
    defined, removed or parsed inside is undone on exit."""
    fv = flags.FLAGS
    state, values = dict(fv.__dict__), flagsaver.save_flag_values(fv)
    for key, v in state.items():  # FlagValues' registries, copied so that nothing leaks out
        if isinstance(v, dict):
            fv.__dict__[key] = {k: list(x) if isinstance(x, list) else x for k, x in v.items()}
        elif isinstance(v, set):
            fv.__dict__[key] = set(v)
    for name in list(fv):
        defined_by = fv.find_module_defining_flag(name) or ""
        if not (defined_by.startswith("absl.") or defined_by == module):
            delattr(fv, name)
    try:
        yield
    finally:
        fv.__dict__.clear()
        fv.__dict__.update(state)
        flagsaver.restore_flag_values(values, fv)


def call_cli(module: str, args: list) -> int:
    """Runs CLI ``module`` on ``args`` in-process as its ``__main__`` would (``cli.run``: flags
    defined, parsed with one-line errors, ``main``); returns the exit code."""
    mod = importlib.import_module(module)
    define, kwargs = CLIS[module]
    with isolated_flags(module):
        if define:
            getattr(mod, define)()
        with pytest.raises(SystemExit) as exit_:
            mod.main(cli.parse_flags([module, *args], **{"config_overrides": False,
                                                         "positional": False, **kwargs}))
    return exit_.value.code


def check_one_line(rc, stderr: str, want: list) -> None:
    lines = stderr.strip().splitlines()
    assert rc == 2 and "Traceback" not in stderr, (rc, stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert all(w in lines[0] for w in want), (want, lines[0])


@pytest.mark.parametrize("name, args, want", CASES,
                         ids=[f"{c[0]}:{' '.join(c[1])}" for c in CASES])
def test_bad_input_one_line_exit_2(name, args, want, paths, capsys):
    rc = call_cli(f"experiments.{name}", [a.format(**paths) for a in args])
    check_one_line(rc, capsys.readouterr().err, want)


def test_every_cli_has_cases():
    assert {f"experiments.{c[0]}" for c in CASES} == set(CLIS)
    assert {c[0] for c in MAIN_CASES} == {m.split(".")[1] for m in CLIS} | {"train", "generate"}


def test_isolated_flags_leaves_global_flags_as_they_were():
    before = {name: flags.FLAGS[name] for name in flags.FLAGS}
    parsed = flags.FLAGS.is_parsed()
    with isolated_flags("experiments.cost_model"):
        importlib.import_module("experiments.cost_model").define_flags()
        flags.FLAGS(["cost_model", "--preset", "worked_227m"])
    assert {name: flags.FLAGS[name] for name in flags.FLAGS} == before
    assert flags.FLAGS.is_parsed() == parsed and "preset" not in flags.FLAGS


def test_python_m_entry_points(paths):
    """Each CLI's ``__main__`` (one process forked per CLI from one interpreter)."""
    jobs = [(f"experiments.{name}", [a.format(**paths) for a in args])
            for name, args, _ in MAIN_CASES]
    for (name, args, want), res in zip(MAIN_CASES, run_clis(jobs)):
        check_one_line(res["rc"], res["stderr"], want)
