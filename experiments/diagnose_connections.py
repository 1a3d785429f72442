"""Connection diagnostics of trained runs: representation collapse (E3), unfolded connection
matrices (E4), learned coefficients (E5) and residual signal gain (E6).

  python -m experiments.diagnose_connections --workdirs runs/a,runs/b --names baseline,hc4 \
      --out results/x/diagnostics [--batches 4] [--max_tokens 2048] [--step N]

Each run's latest checkpoint (or --step) is loaded with ``load_model``; the first --batches
validation batches of the run's own data config are forwarded. Writes to --out:
  cosine.png                 median/p5/p95 of cos(h^k, h^{k-1}) per model vs sublayer
  gain.png                   forward/backward composite and single-sublayer gains (log y) of
                             the token-mean mixing matrices
  gain_products.png          the same, gains per token then averaged
  unfolded_<name>.png        C0 and per-stream C^(i) (coefficients averaged over tokens)
  unfolded_<name>_products.png   dynamic connections: per-token unfolding, then averaged
  diagnostics.json           the numbers behind the plots (see ``run``)
See ``seedjax.eval.connection_diagnostics`` for the definitions.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
from absl import flags
from absl import logging as absl_logging

from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    """CLI flags, defined only when run as a script (so importing ``run`` in tests or other
    tools does not clash with their flags, e.g. ``--out``)."""
    flags.DEFINE_list("workdirs", None, "Comma-separated run directories (with checkpoints/).")
    flags.DEFINE_list("names", None, "Comma-separated display names (default: the basenames).")
    flags.DEFINE_string("out", None, "Output directory for PNGs and diagnostics.json.")
    flags.DEFINE_integer("batches", 4, "Validation batches per run.")
    flags.DEFINE_integer("max_tokens", 2048, "Token subsample for the per-token ('products') "
                         "unfolding and gains.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: latest of each run).")
    flags.mark_flags_as_required(["workdirs", "out"])


def jsonable(x):
    """numpy arrays/scalars (nested in dicts/lists) -> JSON types; non-finite floats -> None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    return x


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def val_batches(config, batches: int) -> list[dict]:
    """The first ``batches`` validation batches ({"inputs", "targets", ...} [B, T]) of a run's
    data config (the batches its training evaluated on)."""
    from seedjax.data import build_lm_data
    d = config.data
    data = build_lm_data(source=d.source, seq_len=int(d.seq_len), batch_size=int(d.batch_size),
                         seed=int(config.train.seed), val_fraction=float(d.val_fraction),
                         max_val_batches=int(d.max_val_batches))
    return list(data.val_batches()[:batches])


def val_token_batches(config, batches: int) -> list[np.ndarray]:
    """The first ``batches`` validation input batches [B, T] (int32) of a run's data config."""
    return [np.asarray(b["inputs"], np.int32) for b in val_batches(config, batches)]


def val_tokens(config, batches: int) -> np.ndarray:
    """The same batches concatenated, [k*B, T] int32."""
    return np.concatenate(val_token_batches(config, batches), axis=0)


def diagnose_model(model, tokens: np.ndarray, *, chunk: int | None = None,
                   max_tokens: int = 2048) -> dict:
    """All diagnostics of one model on ``tokens`` (numpy arrays; see ``run``)."""
    from seedjax.eval import connection_diagnostics as cd
    cos = cd.branch_input_cosine(model, tokens, chunk=chunk)
    coeffs = cd.sublayer_coefficients(model, tokens, chunk=chunk)
    out = {"kind": coeffs.kind, "n_streams": coeffs.n_streams, "dynamic": coeffs.dynamic,
           "out_scale": coeffs.out_scale,
           "n_tokens": int(tokens.size), "cosine": cd.cosine_summary(cos),
           "coefficients": cd.coefficient_summary(coeffs), "unfolded": {}, "gain": {}}
    for avg in cd.AVERAGES:
        C0, per_stream = cd.unfold_connections(coeffs, avg, max_tokens=max_tokens)
        out["unfolded"][avg] = {"C0": C0, "per_stream": per_stream,
                                "summary": cd.unfolded_summary(C0)}
        out["gain"][avg] = cd.composite_gain(coeffs, avg, max_tokens=max_tokens)
    return out


def check_runs(workdirs: list[str], names: list[str] | None, batches: int) -> list[str]:
    """Validates the CLI's run arguments (shared by the diagnostics CLIs) and returns the run
    names (default: the workdirs' basenames)."""
    if not workdirs:
        raise ValueError("--workdirs is empty: pass at least one run directory")
    names = list(names) if names else [os.path.basename(os.path.normpath(w)) for w in workdirs]
    if len(names) != len(workdirs):
        raise ValueError(f"--names has {len(names)} entries but --workdirs has {len(workdirs)}; "
                         "give one name per run")
    if len(set(names)) != len(names):
        raise ValueError(f"--names must be distinct, got {names}")
    if batches < 1:
        raise ValueError(f"--batches must be >= 1, got {batches}")
    for w in workdirs:
        if not os.path.isdir(os.path.join(w, "checkpoints")):
            raise ValueError(f"workdir {w!r} has no checkpoints/ directory (train it first)")
    return names


def run(workdirs: list[str], names: list[str] | None, out: str, batches: int = 4,
        max_tokens: int = 2048, step: int | None = None) -> dict:
    """Diagnoses every run, writes the PNGs and diagnostics.json to ``out``; returns the JSON
    dict {"batches", "max_tokens", "runs": {name: {workdir, step, connection,
    connection_kwargs, kind, n_streams, dynamic, out_scale, n_tokens, cosine, coefficients,
    unfolded: {weights|products: {C0, per_stream, summary}}, gain: {weights|products}}}}."""
    from seedjax.eval import connection_diagnostics as cd
    from seedjax.train.restore import load_model
    names = check_runs(workdirs, names, batches)
    os.makedirs(out, exist_ok=True)
    result = {"batches": batches, "max_tokens": max_tokens, "runs": {}}
    for w, name in zip(workdirs, names):
        model, config, ckpt_step = load_model(w, step)
        tokens = val_tokens(config, batches)
        r = diagnose_model(model, tokens, chunk=int(config.data.batch_size),
                           max_tokens=max_tokens)
        r.update(workdir=w, step=ckpt_step, connection=config.model.connection,
                 connection_kwargs=dict(config.model.connection_kwargs))
        result["runs"][name] = r
        u = r["unfolded"]
        cd.plot_unfolded(u["weights"]["C0"], os.path.join(out, f"unfolded_{_safe(name)}.png"),
                         f"{name} (token-mean weights)",
                         per_stream=u["weights"]["per_stream"] if r["n_streams"] > 1 else None,
                         out_scale=r["out_scale"])
        if r["dynamic"]:
            cd.plot_unfolded(u["products"]["C0"],
                             os.path.join(out, f"unfolded_{_safe(name)}_products.png"),
                             f"{name} (token-mean of per-token unfolding)",
                             out_scale=r["out_scale"])
    runs = result["runs"]
    cd.plot_cosine({k: v["cosine"] for k, v in runs.items()}, os.path.join(out, "cosine.png"))
    for avg, png in (("weights", "gain.png"), ("products", "gain_products.png")):
        cd.plot_gain({k: v["gain"][avg] for k, v in runs.items()}, os.path.join(out, png))
    result = jsonable(result)
    with open(os.path.join(out, "diagnostics.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def summary_lines(result: dict) -> list[str]:
    lines = []
    for name, r in result["runs"].items():
        cos, g = r["cosine"], r["gain"]["weights"]
        s = r["unfolded"]["weights"]["summary"]
        lines.append(
            f"{name}: {r['connection']} (n={r['n_streams']}{', dynamic' if r['dynamic'] else ''})"
            f" step {r['step']}, {r['n_tokens']} tokens | cos median last/mean "
            f"{cos['median'][-1]:.3f}/{np.mean(cos['median']):.3f} | composite gain from "
            f"sublayer 1 fwd {g['forward'][0]:.3g} bwd {g['backward'][0]:.3g} (max "
            f"{max(g['forward']):.3g}/{max(g['backward']):.3g}) | c_out,emb "
            f"{s['final_embedding']:.3g}")
    return lines


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every restore at INFO
    from seedjax.validation import check_int
    with cli.expected_errors():  # flags, workdirs, checkpoint step
        check_int("--max_tokens", FLAGS.max_tokens)
        result = run(FLAGS.workdirs, FLAGS.names, FLAGS.out, FLAGS.batches, FLAGS.max_tokens,
                     FLAGS.step)
    print("\n".join(summary_lines(result)))
    print(f"wrote {os.path.join(FLAGS.out, 'diagnostics.json')} and PNGs to {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main, define_flags)
