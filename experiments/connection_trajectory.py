"""The learned connection coefficients over training (HC E5): every retained checkpoint of each
run, its coefficients on the run's own validation tokens, and their summary statistics against
the step.

  python -m experiments.connection_trajectory --workdirs runs/a,runs/b --names shc,dhc \
      --out results/x/trajectory [--batches 2]

A run keeps only ``train.keep_checkpoints`` checkpoints (default 2); train with e.g.
``--config.train.checkpoint_every=100 --config.train.keep_checkpoints=7`` to keep a trajectory.
Per run and step (``seedjax.eval.connection_diagnostics.coefficient_summary``, token means for
dynamic connections): ||A_r - I||_F (the stream-mixing matrix's distance from the identity), the
write weights B and read weights A_m per stream, and the effective number of streams
exp(H(stream norm shares)); plotted as the mean over sublayers (and streams) with the min-max
band. Writes trajectory.json (every sublayer's values per step) and trajectory.png.
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import flags
from absl import logging as absl_logging

from experiments import cli

FLAGS = flags.FLAGS
STATS = (("res_identity_dev", "||A_r - I||_F"), ("write_mean", "B (write)"),
         ("read_mean", "A_m (read)"), ("effective_streams", "effective streams"))


def define_flags() -> None:
    flags.DEFINE_list("workdirs", None, "Comma-separated run directories (with checkpoints/).")
    flags.DEFINE_list("names", None, "Comma-separated display names (default: the basenames).")
    flags.DEFINE_string("out", None, "Output directory for trajectory.json / .png.")
    flags.DEFINE_integer("batches", 2, "Validation batches per checkpoint.")


def run_trajectory(workdir: str, steps: list[int], batches: int) -> dict:
    """{"steps": [...], stat: [[per-sublayer values] per step]} for one run's checkpoints at
    ``steps``."""
    from experiments.diagnose_connections import val_tokens
    from seedjax.eval import connection_diagnostics as cd
    from seedjax.train.restore import load_model

    out = {"steps": [], **{k: [] for k, _ in STATS}}
    tokens = None
    for step in steps:
        model, config, got = load_model(workdir, step)
        if tokens is None:
            tokens = val_tokens(config, batches)
        s = cd.coefficient_summary(cd.sublayer_coefficients(model, tokens,
                                                            chunk=int(config.data.batch_size)))
        out["steps"].append(int(got))
        for k, _ in STATS:
            out[k].append(np.asarray(s[k], np.float64).tolist())
    return out


def run(workdirs: list[str], names: list[str] | None, out: str, batches: int = 2) -> dict:
    """Trajectories of every run; writes trajectory.json and trajectory.png to ``out``."""
    from experiments.diagnose_connections import check_runs
    from seedjax.train.restore import checkpoint_steps
    names = check_runs(workdirs, names, batches)
    steps = {w: checkpoint_steps(w) for w in workdirs}
    for w, kept in steps.items():
        if len(kept) < 2:
            raise ValueError(f"workdir {w!r} keeps {len(kept)} checkpoint(s); a trajectory needs 2 "
                             "or more (train with --config.train.keep_checkpoints=7 "
                             "--config.train.checkpoint_every=100)")
    result = {"batches": batches, "runs": {}}
    for w, name in zip(workdirs, names):
        result["runs"][name] = {"workdir": w, **run_trajectory(w, steps[w], batches)}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "trajectory.json"), "w") as f:
        json.dump(result, f, indent=1)
    _plot(result, os.path.join(out, "trajectory.png"))
    return result


def _plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(STATS), figsize=(4 * len(STATS), 3.2))
    for ax, (key, label) in zip(axes, STATS):
        for name, r in result["runs"].items():
            v = np.asarray(r[key], np.float64)                # [steps, sublayers(, streams)]
            v = v.reshape(v.shape[0], -1)
            line, = ax.plot(r["steps"], v.mean(1), marker="o", ms=3, label=name)
            ax.fill_between(r["steps"], v.min(1), v.max(1), color=line.get_color(), alpha=0.15)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.suptitle("Connection coefficients over training (mean over sublayers and streams, "
                 "min-max band)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    with cli.expected_errors():
        if not FLAGS.out:
            raise ValueError("--out is required: the directory for trajectory.json / .png")
        result = run(FLAGS.workdirs or [], FLAGS.names, FLAGS.out, FLAGS.batches)
    for name, r in result["runs"].items():
        dev = [np.mean(v) for v in r["res_identity_dev"]]
        print(f"{name}: steps {r['steps']}; mean ||A_r - I||_F "
              + " -> ".join(f"{d:.3f}" for d in dev))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
