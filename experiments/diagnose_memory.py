"""Memory-layer diagnostics of a trained run: slot usage and KL to uniform (PKM §4.4,
UltraMem Fig. 10), selected-score and output scales, Tucker-core singular values (V2 Fig. 8).

  python -m experiments.diagnose_memory --workdir runs/X [--batches 8] [--out DIR] [--step N]

The run's latest checkpoint (or --step) is loaded with ``load_model``; the first --batches
validation batches of its own data config (held out from training) are forwarded. Writes to
--out (default <workdir>/memory_diagnostics):
  memory_diagnostics.json   the numbers (see ``run``)
  memory_diagnostics.md     one table row per unit (and the pooled shared V2 table)
  slot_counts.npz           raw access counts per unit (key = unit name) and "shared_table"
  slot_access.png           per unit: sorted access frequency of the rows vs rank / R (log y)
  unit_summary.png          per unit bars: usage, KL to uniform, top-1 score, lambda1/lambda2
See ``seedjax.eval.memory_diagnostics`` for the definitions.
"""
from __future__ import annotations

import json
import os

import numpy as np
from absl import flags
from absl import logging as absl_logging

from experiments import cli
from experiments.diagnose_connections import jsonable, val_token_batches

FLAGS = flags.FLAGS


def _define_flags():  # at __main__ only, so importing run() defines no global flags
    flags.DEFINE_string("workdir", None, "Run directory (with checkpoints/).")
    flags.DEFINE_string("out", None, "Output directory (default: <workdir>/memory_diagnostics).")
    flags.DEFINE_integer("batches", 8, "Validation batches to forward.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_bool("progress", True, "Show a progress bar over batches.")
    flags.mark_flag_as_required("workdir")


def run(workdir: str, out: str | None = None, batches: int = 8, step: int | None = None,
        progress: bool = True) -> dict:
    """Diagnoses the run and writes the files listed in the module docstring; returns the JSON
    dict {"workdir", "step", "out", "batches", "batch_shape", "model": {ffn, memory,
    memory_layers, memory_kwargs, scan_layers}, "n_tokens", "units": [...], "global_table",
    "layer_out_std"} (unit fields: ``seedjax.eval.memory_diagnostics.summarize``)."""
    from seedjax.eval import memory_diagnostics as md
    from seedjax.train.restore import load_model
    if batches < 1:
        raise ValueError(f"--batches must be >= 1, got {batches}")
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise ValueError(f"workdir {workdir!r} has no checkpoints/ directory (train it first)")
    out = out or os.path.join(workdir, "memory_diagnostics")
    model, config, ckpt_step = load_model(workdir, step)
    md.memory_units(model)                       # fails early for a model without memory
    token_batches = val_token_batches(config, batches)
    if not token_batches:
        raise ValueError(f"run {workdir!r} has no validation batches (data.val_fraction / "
                         "data.max_val_batches)")
    summary, stats = md.diagnose(model, token_batches, progress=progress)
    os.makedirs(out, exist_ok=True)
    m = config.model
    result = {"workdir": workdir, "step": ckpt_step, "out": out, "batches": len(token_batches),
              "batch_shape": list(token_batches[0].shape),
              "model": {"ffn": m.ffn, "memory": m.get("memory", "none"),
                        "memory_layers": m.get("memory_layers", ""),
                        "memory_kwargs": dict(m.get("memory_kwargs", {})),
                        "scan_layers": bool(m.scan_layers)},
              **summary}
    result = jsonable(result)
    with open(os.path.join(out, "memory_diagnostics.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "memory_diagnostics.md"), "w") as f:
        f.write(f"# Memory diagnostics: {workdir} (step {ckpt_step}, {summary['n_tokens']} val "
                "tokens)\n\nusage = fraction of rows accessed; KL = KL(access frequency || "
                "uniform) in nats (max log R); scores summed over cores; UltraMemV2 shared "
                "tables: per-unit rows are the unit's window.\n\n")
        f.write(md.markdown_table(summary))
    arrays = dict(stats.counts)
    g = stats.global_counts()
    if g is not None:
        arrays["shared_table"] = g
    np.savez_compressed(os.path.join(out, "slot_counts.npz"), **arrays)
    md.plot_slot_access(stats, os.path.join(out, "slot_access.png"))
    md.plot_unit_summary(summary, os.path.join(out, "unit_summary.png"))
    return result


def summary_lines(result: dict) -> list[str]:
    lines = [f"{result['workdir']} step {result['step']}: {result['n_tokens']} val tokens"]
    for u in result["units"]:
        ratio = ""
        if "sv_ratio" in u:
            ratio = " | λ1/λ2 " + ", ".join("inf" if x is None else f"{x:.2f}"
                                            for x in u["sv_ratio"])
        lines.append(f"  {u['name']} ({u['kind']}, {u['read_block']}->{u['write_block']}, "
                     f"R={u['n_rows']}): usage {u['usage']:.3f} | KL {u['kl_uniform']:.3f} "
                     f"(max {u['log_rows']:.2f}) | top-1 {u['top1_mean']:.3g}±"
                     f"{u['top1_std']:.2g} | mem/layer out std {u['mem_out_std']:.3g}/"
                     f"{u['layer_out_std']:.3g}{ratio}")
    g = result["global_table"]
    if g is not None:
        lines.append(f"  shared table (R={g['n_rows']}): usage {g['usage']:.3f} | KL "
                     f"{g['kl_uniform']:.3f}")
    return lines


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    with cli.expected_errors():  # flags, workdir, checkpoint step, a model without memory
        result = run(FLAGS.workdir, FLAGS.out, FLAGS.batches, FLAGS.step, FLAGS.progress)
    print("\n".join(summary_lines(result)))
    print(f"wrote memory_diagnostics.json/.md, slot_counts.npz and PNGs to {result['out']}")


if __name__ == "__main__":
    cli.run(main, _define_flags)
