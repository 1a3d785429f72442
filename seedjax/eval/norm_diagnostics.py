"""SeeDNorm diagnostics (connections spec E8) of a trained LM.

For every norm site (each block's ``attn_norm`` and ``ffn_norm``, then ``final_norm``) that is a
:class:`~seedjax.nn.norms.SeeDNorm`, on held-out tokens:

* the dynamic scalar ``a = act(x . beta)`` per token and head: mean, std, 5th/95th percentiles
  and the saturated fraction (``|a| > 0.9`` for tanh/hardtanh, ``a < 0.05`` or ``a > 0.95`` for
  sigmoid), where the scalar's gradient has (nearly) vanished;
* the effective gain ``g = mean_c(gamma + alpha * a)`` per token: mean, std, percentiles. RMSNorm
  has one gain for all tokens, so the spread of g over tokens is what SeeDNorm adds;
* the input RMS (the scale SeeDNorm's dot product sees) and the parameter summaries
  ``|beta|``, mean alpha and mean gamma.

The norm inputs come from the LM's own forward (intermediates ``branch_inputs`` and the last
``layer_outputs`` reduced by the connection), so the model is not modified.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from seedjax.eval.memory_diagnostics import lm_blocks
from seedjax.nn.norms import SeeDNorm

def norm_sites(model) -> list[tuple[str, object]]:
    """[(name, norm module)] in forward order: ``L{i}.attn``, ``L{i}.ffn`` ..., ``final``."""
    sites = []
    for i, block in enumerate(lm_blocks(model)):
        sites += [(f"L{i}.attn", block.attn_norm), (f"L{i}.ffn", block.ffn_norm)]
    return sites + [("final", model.final_norm)]


def norm_inputs(model, tokens) -> list[jax.Array]:
    """The inputs of ``norm_sites(model)`` on ``tokens`` [B, T], each [B, T, d]."""
    out = model(jnp.asarray(tokens), return_intermediates=True)
    branch = out.intermediates["branch_inputs"]          # [L, 2, B, T, d]
    final = model.connection.reduce(out.intermediates["layer_outputs"][-1], model.cfg)
    return [branch[i, j] for i in range(branch.shape[0]) for j in range(2)] + [final]


def _site_arrays(norm: SeeDNorm, x: jax.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> act [N, heads], gain [N] (channel-mean effective gain), rms [N] for x [..., d]."""
    x = x.reshape(-1, norm.dim).astype(jnp.float32)
    act = norm.dynamic_scalar(x)                          # [N, h]
    gain = jnp.mean(norm.gamma_vector()) + jnp.mean(norm.gain_from_scalar(act), axis=-1)
    rms = jnp.sqrt(jnp.mean(x * x, axis=-1))
    return np.asarray(act), np.asarray(gain), np.asarray(rms)


def _saturated(act: np.ndarray, activation: str) -> float:
    if activation == "sigmoid":
        return float(np.mean((act < 0.05) | (act > 0.95)))
    return float(np.mean(np.abs(act) > 0.9))


def seednorm_summary(model, token_batches) -> list[dict]:
    """Per SeeDNorm site, the statistics of the module docstring pooled over ``token_batches``
    (an iterable of [B, T] int arrays). Raises ValueError if the model has no SeeDNorm."""
    sites = [(i, name, n) for i, (name, n) in enumerate(norm_sites(model))
             if isinstance(n, SeeDNorm)]
    if not sites:
        raise ValueError("the model has no SeeDNorm layers (model.norm must be 'seednorm')")
    parts = {name: [] for _, name, _ in sites}     # per site: [(act, gain, rms)] per batch
    for tokens in token_batches:
        inputs = norm_inputs(model, tokens)
        for i, name, norm in sites:
            parts[name].append(_site_arrays(norm, inputs[i]))
    rows = []
    for _, name, norm in sites:
        a, g, rms = (np.concatenate(x) for x in zip(*parts[name]))
        gamma = np.asarray(norm.gamma_vector())
        rows.append({
            "site": name, "act_mean": float(a.mean()), "act_std": float(a.std()),
            "act_p5": float(np.percentile(a, 5)), "act_p95": float(np.percentile(a, 95)),
            "saturated": _saturated(a, norm.activation),
            "gain_mean": float(g.mean()), "gain_std": float(g.std()),
            "gain_p5": float(np.percentile(g, 5)), "gain_p95": float(np.percentile(g, 95)),
            "input_rms": float(rms.mean()),
            "beta_norm": float(np.linalg.norm(np.asarray(norm.beta[...]))),
            "alpha_mean": float(np.mean(np.asarray(norm.alpha[...]))),
            "gamma_mean": float(gamma.mean())})
    return rows


def markdown_table(rows: list[dict]) -> str:
    """One line per site: act mean ± std, saturated fraction, gain mean [p5, p95], input RMS,
    |beta|, mean alpha, mean gamma."""
    lines = ["| site | act(s) mean ± std | saturated | gain mean [p5, p95] | input RMS | |beta| "
             "| alpha | gamma |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['site']} | {r['act_mean']:+.3f} ± {r['act_std']:.3f} | "
                     f"{r['saturated']:.2f} | {r['gain_mean']:.3f} [{r['gain_p5']:.3f}, "
                     f"{r['gain_p95']:.3f}] | {r['input_rms']:.3f} | {r['beta_norm']:.3f} | "
                     f"{r['alpha_mean']:.3f} | {r['gamma_mean']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_gains(runs: dict[str, list[dict]], path: str) -> str:
    """Effective gain mean and 5-95% band per site (left) and saturated fraction (right), one
    line per run; writes ``path`` (PNG) and returns it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_g, ax_s) = plt.subplots(1, 2, figsize=(12, 4))
    for name, rows in runs.items():
        x = np.arange(len(rows))
        line, = ax_g.plot(x, [r["gain_mean"] for r in rows], marker="o", ms=3, label=name)
        ax_g.fill_between(x, [r["gain_p5"] for r in rows], [r["gain_p95"] for r in rows],
                          color=line.get_color(), alpha=0.15)
        ax_s.plot(x, [r["saturated"] for r in rows], marker="o", ms=3, label=name)
    sites = [r["site"] for r in next(iter(runs.values()))]
    for ax, title in ((ax_g, "effective gain mean_c(gamma + alpha act(s)) (5-95% band)"),
                      (ax_s, "fraction of tokens with act(s) saturated")):
        ax.set_xticks(range(len(sites)), sites, rotation=90, fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    ax_g.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax_s.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
