"""SeeDNorm diagnostics of trained runs (connections spec E8): the distribution of the dynamic
scalar act(x . beta) and of the effective gain per norm site, on held-out tokens.

  python -m experiments.diagnose_norms --workdirs runs/a,runs/b --names seednorm,alpha0.1 \
      --out results/seednorm/diagnostics [--batches 4] [--step N]

Each run's latest checkpoint (or --step) is loaded; the first --batches validation batches of
its own data config are forwarded. Writes to --out: ``gains.png`` (effective gain band and
saturated fraction per site, one line per run), ``norms.md`` (one table per run) and
``diagnostics.json``. See ``seedjax.eval.norm_diagnostics`` for the definitions.
"""
from __future__ import annotations

import json
import os

from absl import flags
from absl import logging as absl_logging

from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("workdirs", None, "Comma-separated run directories (with checkpoints/).")
    flags.DEFINE_list("names", None, "Comma-separated display names (default: the basenames).")
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_integer("batches", 4, "Validation batches per run.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: latest of each run).")
    flags.mark_flags_as_required(["workdirs", "out"])


def run(workdirs: list[str], names: list[str] | None, out: str, batches: int = 4,
        step: int | None = None) -> dict:
    """Diagnoses every run; writes gains.png, norms.md and diagnostics.json to ``out`` and
    returns {"batches", "runs": {name: {"workdir", "step", "norm_kwargs", "sites": [...]}}}."""
    from experiments.diagnose_connections import check_runs, jsonable, val_token_batches
    from seedjax.eval import norm_diagnostics as nd
    from seedjax.train.restore import load_model
    names = check_runs(workdirs, names, batches)
    os.makedirs(out, exist_ok=True)
    result = {"batches": batches, "runs": {}}
    md = ["# SeeDNorm diagnostics\n"]
    for w, name in zip(workdirs, names):
        model, config, ckpt_step = load_model(w, step)
        rows = nd.seednorm_summary(model, val_token_batches(config, batches))
        result["runs"][name] = {"workdir": w, "step": ckpt_step,
                                "norm_kwargs": dict(config.model.norm_kwargs), "sites": rows}
        md += [f"## {name} (`{w}`, step {ckpt_step})\n", nd.markdown_table(rows)]
    nd.plot_gains({k: v["sites"] for k, v in result["runs"].items()},
                  os.path.join(out, "gains.png"))
    with open(os.path.join(out, "norms.md"), "w") as f:
        f.write("\n".join(md))
    result = jsonable(result)
    with open(os.path.join(out, "diagnostics.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)
    with cli.expected_errors():  # flags, workdirs, checkpoint step
        result = run(FLAGS.workdirs, FLAGS.names, FLAGS.out, FLAGS.batches, FLAGS.step)
    for name, r in result["runs"].items():
        sat = max(s["saturated"] for s in r["sites"])
        print(f"{name}: step {r['step']}, {len(r['sites'])} SeeDNorm sites, max saturated "
              f"fraction {sat:.2f}")
    print(f"wrote {FLAGS.out}/gains.png, norms.md, diagnostics.json")


if __name__ == "__main__":
    cli.run(main, define_flags)
