"""Memory-layer diagnostics: slot usage (PKM §4.4, UltraMem Fig. 10), score and output scales,
Tucker-core singular values (UltraMemV2 Fig. 8).

Units (``memory_units``), every memory layer of an LM (``seedjax.models.LM``):
  * "ffn":      a PKM FFN (``model.ffn="pkm"``) of block k; reads and writes block k.
  * "parallel": ``layers.blocks[k].memory`` (placement pair k:k); its output joins the FFN's.
  * "skip":     ``layers.skip_memories[j]`` with ``skip_pairs[j] = (k, v, unit)``; reads block
                k, its output is added to the residual stream after block v.
Every unit reads x_k = ffn_norm_k(h_k) [B, T, d], the normalised FFN input of its read block k.
``memory_inputs`` recovers it from the LM's own forward (intermediates ``branch_inputs``
[L, 2, B, T, d], h_k = branch_inputs[k, 1]), so looped and scanned layer stacks are handled
alike (scanned blocks are unstacked to reach their norms and memory modules).

Per unit, over the N_tok tokens of the batches (``collect``):
  counts [R]      accesses per table row: a bincount of the retrieved rows over tokens, heads
                  and top-k picks (sum = N_tok H k). R = the rows the unit can address: PKM's
                  N = n^2 slots; UltraMem's N physical rows (the E IVE blocks of a row are one
                  row here); UltraMemV2 its own N rows (sharing "none") or its window of g tables
                  of the global [L N] table (g N rows, window order = ``shared_tables``).
  top1            per token and head, the largest selected score (summed over the h_c cores;
                  raw, pre-softmax for PKM): mean / std over N_tok H values.
  score           all N_tok H k selected scores (summed over cores): mean / std.
  mem_out         the unit's output on x_k [B, T, d]: std over all entries.
  layer_out       the output of block v (the block the unit writes into): std over all entries.
Stds are population stds, pooled over batches in float64 (Chan et al.'s parallel update).

Metrics (PKM §4.4 defines them on softmax-weighted accesses; here on access counts):
  usage(c) = #{i : c_i > 0} / R                               fraction of rows touched
  KL(c)    = sum_i p_i log(p_i R),  p = c / sum(c)            KL(p || uniform) in nats; 0 for
                                                              uniform access, log R when one
                                                              row takes every access
Shared UltraMemV2 tables: per-unit metrics are over the unit's window (g N rows); the pooled
access of all units over the whole [L N] table is reported as ``global_table``.

Tucker cores (``tucker_singular_values``): per UltraMem/V2 unit the singular values [H, r] of each
head's summed core, and lambda_1 / lambda_2 per head (V2 Fig. 8: > 4 without the penalty).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.models.lm import call_memory
from seedjax.nn.memory import ProductKeyMemory, UltraMem, UltraMemV2, shared_tables

KINDS = ((ProductKeyMemory, "pkm"), (UltraMem, "ultramem"), (UltraMemV2, "ultramem_v2"))


@dataclasses.dataclass(frozen=True)
class MemoryUnit:
    """Static description of one memory unit (see the module docstring)."""
    name: str                  # "block2.ffn" | "block2.memory" | "skip0:1->3"
    kind: str                  # "pkm" | "ultramem" | "ultramem_v2"
    placement: str             # "ffn" | "parallel" | "skip"
    read_block: int            # k: block whose normalised FFN input the unit reads
    write_block: int           # v: block whose output the unit's output joins
    unit: int | None           # memory unit index (the ``layer`` of V2 sharing); None for FFNs
    skip_index: int | None     # j in ``layers.skip_memories``
    heads: int
    topk: int
    n_rows: int                # R
    rows_per_table: int        # N
    window: tuple[int, ...] | None = None   # V2 shared: global table ids read, in window order
    n_tables: int | None = None             # V2 shared: L tables in the global table

    @property
    def accesses_per_token(self) -> int:
        return self.heads * self.topk


def lm_blocks(model) -> list:
    """The LM's blocks as modules (scanned stacks are unstacked, as in the scan body)."""
    layers = model.layers
    if layers.scan:
        return [nnx.merge(layers.graphdef, jax.tree.map(lambda x, i=i: x[i], layers.stacked))
                for i in range(layers.n_layers)]
    return list(layers.blocks)


def _kind(module) -> str:
    for cls, name in KINDS:
        if isinstance(module, cls):
            return name
    raise ValueError(f"memory diagnostics support PKM, UltraMem and UltraMemV2 units, got "
                     f"{type(module).__name__}")


def _describe(module, name, placement, k, v, unit, skip_index) -> MemoryUnit:
    kind = _kind(module)
    c = module.config
    window = n_tables = None
    rows = c.n_slots
    if kind == "ultramem_v2" and c.sharing != "none":
        window = tuple(shared_tables(c.sharing, unit, c.n_layers, c.share_group))
        n_tables, rows = c.n_layers, c.share_group * c.n_slots
    return MemoryUnit(name, kind, placement, k, v, unit, skip_index, c.heads, c.topk, rows,
                      c.n_slots, window, n_tables)


def memory_units(model) -> list[MemoryUnit]:
    """Every memory unit of ``model`` in block order (FFN, parallel unit, then skip units by
    their write block). ValueError if there is none."""
    layers = model.layers
    units = []
    for i, block in enumerate(lm_blocks(model)):
        if isinstance(block.ffn, ProductKeyMemory):
            units.append(_describe(block.ffn, f"block{i}.ffn", "ffn", i, i, None, None))
        if block.memory is not None:
            # the scan body passes the layer index as the unit; the loop its placement unit
            u = i if layers.scan else layers.parallel_units[i]
            units.append(_describe(block.memory, f"block{i}.memory", "parallel", i, i, u, None))
    skips = sorted(enumerate(layers.skip_pairs), key=lambda t: (t[1][1], t[0]))
    for j, (k, v, u) in skips:
        units.append(_describe(layers.skip_memories[j], f"skip{j}:{k}->{v}", "skip", k, v, u, j))
    if not units:
        cfg = model.cfg
        raise ValueError(f"the model has no memory units (model.ffn={cfg.ffn!r}, model.memory="
                         f"{cfg.memory!r}); use ffn='pkm' or memory='pkm'|'ultramem'|"
                         "'ultramem_v2' with memory_layers")
    return units


def unit_module(model, unit: MemoryUnit, blocks=None):
    """The module of ``unit`` in ``model`` (``blocks``: ``lm_blocks(model)``, if at hand)."""
    if unit.placement == "skip":
        return model.layers.skip_memories[unit.skip_index]
    block = (blocks or lm_blocks(model))[unit.read_block]
    return block.ffn if unit.placement == "ffn" else block.memory


def memory_inputs(model, tokens, blocks=None, intermediates=None) -> dict[int, jax.Array]:
    """{k: x_k [B, T, d]} for every read block k of ``model``'s units: the normalised FFN input
    ffn_norm_k(branch_inputs[k, 1]) of the LM forward on ``tokens`` [B, T]."""
    blocks = blocks or lm_blocks(model)
    if intermediates is None:
        intermediates = model(jnp.asarray(tokens), return_intermediates=True).intermediates
    reads = sorted({u.read_block for u in memory_units(model)})
    return {k: blocks[k].ffn_norm(intermediates["branch_inputs"][k, 1]) for k in reads}


# --------------------------------------------------------------------------- metrics

def usage(counts) -> float:
    """Fraction of rows accessed at least once."""
    counts = np.asarray(counts)
    return float(np.count_nonzero(counts) / counts.size)


def kl_to_uniform(counts) -> float:
    """KL(p || uniform) = sum_i p_i log(p_i R) in nats, p = counts / sum(counts)."""
    c = np.asarray(counts, np.float64).ravel()
    total = c.sum()
    if total <= 0:
        raise ValueError("kl_to_uniform needs at least one access (all counts are 0)")
    p = c[c > 0] / total
    return float(np.sum(p * np.log(p * c.size)))


def _moments(a: jax.Array) -> jax.Array:
    """[n, mean, M2] of all entries (float32; M2 = sum of squared deviations)."""
    a = a.astype(jnp.float32)
    mean = jnp.mean(a)
    return jnp.stack([jnp.float32(a.size), mean, jnp.sum(jnp.square(a - mean))])


def _merge(acc: np.ndarray | None, new) -> np.ndarray:
    """Pools two [n, mean, M2] triples (float64)."""
    new = np.asarray(new, np.float64)
    if acc is None:
        return new
    (na, ma, qa), (nb, mb, qb) = acc, new
    n, d = na + nb, mb - ma
    return np.array([n, ma + d * nb / n, qa + qb + d * d * na * nb / n])


def _mean_std(m: np.ndarray) -> tuple[float, float]:
    return float(m[1]), float(math.sqrt(max(m[2], 0.0) / m[0]))


# --------------------------------------------------------------------------- collection

@dataclasses.dataclass
class MemoryStats:
    """Accumulated statistics (see the module docstring); moments are [n, mean, M2] float64."""
    units: list[MemoryUnit]
    counts: dict[str, np.ndarray]        # name -> [R] int64
    top1: dict[str, np.ndarray]
    score: dict[str, np.ndarray]
    mem_out: dict[str, np.ndarray]
    layer_out: list[np.ndarray]          # per block
    n_tokens: int = 0

    def global_counts(self) -> np.ndarray | None:
        """[L N] accesses of the shared UltraMemV2 table pooled over its units (None if no
        unit reads a shared table)."""
        shared = [u for u in self.units if u.window is not None]
        if not shared:
            return None
        N = shared[0].rows_per_table
        out = np.zeros(shared[0].n_tables * N, np.int64)
        for u in shared:
            for w, t in enumerate(u.window):
                out[t * N:(t + 1) * N] += self.counts[u.name][w * N:(w + 1) * N]
        return out


def _retrieve(module, unit: MemoryUnit, x):
    """-> (selected scores summed over cores [B, T, H, k], rows [B, T, H, k] in [0, R))."""
    if unit.kind == "pkm":
        return module.retrieve(x)
    if unit.kind == "ultramem":
        scores, rows, _ = module.retrieve(x)
        return scores.sum(-1), rows
    scores, rows = module.retrieve(x, layer=unit.unit)
    if unit.window is not None:                 # global row -> position in the unit's window
        N = unit.rows_per_table
        inv = np.full(unit.n_tables, -1, np.int32)
        inv[list(unit.window)] = np.arange(len(unit.window), dtype=np.int32)
        rows = jnp.asarray(inv)[rows // N] * N + rows % N
    return scores.sum(-1), rows


def _batch_fn(graphdef, units: list[MemoryUnit]):
    """jitted (state, tokens [B, T]) -> per-batch counts and moments."""

    def fn(state, tokens):
        model = nnx.merge(graphdef, state)
        inter = model(tokens, return_intermediates=True).intermediates
        blocks = lm_blocks(model)
        tables = None if model.memory_tables is None else model.memory_tables()
        xs = memory_inputs(model, tokens, blocks, inter)
        out = {"layer_out": [_moments(h) for h in inter["layer_outputs"]]}
        for u in units:
            module, x = unit_module(model, u, blocks), xs[u.read_block]
            scores, rows = _retrieve(module, u, x)
            if u.placement == "ffn":
                y = module(x)
            else:
                y, _ = call_memory(module, x, tables, u.unit)
            out[u.name] = {"counts": jnp.bincount(rows.reshape(-1), length=u.n_rows),
                           "top1": _moments(jnp.max(scores, axis=-1)),
                           "score": _moments(scores), "mem_out": _moments(y)}
        return out

    return jax.jit(fn)


def collect(model, batches, *, progress: bool = True) -> MemoryStats:
    """Runs the LM on each token batch [B, T] (int) of ``batches`` and accumulates every unit's
    access counts and score / output moments (one jitted forward + retrievals per batch)."""
    units = memory_units(model)
    batches = list(batches)
    if not batches:
        raise ValueError("collect needs at least one token batch")
    graphdef, state = nnx.split(model)
    fn = _batch_fn(graphdef, units)
    L = model.layers.n_layers
    stats = MemoryStats(units, {u.name: np.zeros(u.n_rows, np.int64) for u in units},
                        {}, {}, {}, [None] * L)
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc="memory diagnostics", dynamic_ncols=True, leave=False)
    for tokens in batches:
        tokens = np.asarray(tokens, np.int32)
        if tokens.ndim != 2:
            raise ValueError(f"token batches must be [batch, length], got shape {tokens.shape}")
        out = jax.device_get(fn(state, tokens))
        stats.n_tokens += tokens.size
        for l in range(L):
            stats.layer_out[l] = _merge(stats.layer_out[l], out["layer_out"][l])
        for u in units:
            o = out[u.name]
            stats.counts[u.name] += o["counts"]
            for key in ("top1", "score", "mem_out"):
                acc = getattr(stats, key)
                acc[u.name] = _merge(acc.get(u.name), o[key])
    return stats


# --------------------------------------------------------------------------- summaries

def tucker_singular_values(model) -> dict[str, np.ndarray]:
    """{unit name: singular values [H, r] of each head's summed Tucker core} for the UltraMem /
    UltraMemV2 units (PKM units have no core)."""
    blocks = lm_blocks(model)
    return {u.name: np.asarray(unit_module(model, u, blocks).retrieval.singular_values())
            for u in memory_units(model) if u.kind != "pkm"}


def sv_ratio(sv: np.ndarray) -> np.ndarray:
    """lambda_1 / lambda_2 per head from singular values [H, r] (r >= 2; inf if lambda_2 = 0)."""
    sv = np.asarray(sv, np.float64)
    if sv.shape[-1] < 2:
        raise ValueError(f"lambda_1/lambda_2 needs rank >= 2, got singular values {sv.shape}")
    with np.errstate(divide="ignore"):
        return sv[..., 0] / sv[..., 1]


def summarize(stats: MemoryStats, singular_values: dict | None = None) -> dict:
    """Per-unit metrics (JSON-ready apart from numpy scalars/arrays): {"n_tokens", "units":
    [{name, kind, placement, read_block, write_block, unit, heads, topk, n_rows, window,
    accesses, usage, kl_uniform, log_rows, top1_mean/std, score_mean/std, mem_out_std,
    layer_out_std, [tucker_sv [H, r], sv_ratio [H]]}], "global_table": {n_rows, usage,
    kl_uniform, log_rows} | None, "layer_out_std": [L]}."""
    singular_values = singular_values or {}
    layer_std = [_mean_std(m)[1] for m in stats.layer_out]
    rows = []
    for u in stats.units:
        c = stats.counts[u.name]
        t_mean, t_std = _mean_std(stats.top1[u.name])
        s_mean, s_std = _mean_std(stats.score[u.name])
        r = {"name": u.name, "kind": u.kind, "placement": u.placement,
             "read_block": u.read_block, "write_block": u.write_block, "unit": u.unit,
             "heads": u.heads, "topk": u.topk, "n_rows": u.n_rows,
             "window": None if u.window is None else list(u.window),
             "accesses": int(c.sum()), "usage": usage(c), "kl_uniform": kl_to_uniform(c),
             "log_rows": math.log(u.n_rows), "top1_mean": t_mean, "top1_std": t_std,
             "score_mean": s_mean, "score_std": s_std,
             "mem_out_std": _mean_std(stats.mem_out[u.name])[1],
             "layer_out_std": layer_std[u.write_block]}
        if u.name in singular_values:
            sv = np.asarray(singular_values[u.name])
            r["tucker_sv"] = sv
            if sv.shape[-1] >= 2:
                r["sv_ratio"] = sv_ratio(sv)
        rows.append(r)
    g = stats.global_counts()
    glob = None if g is None else {"n_rows": int(g.size), "usage": usage(g),
                                   "kl_uniform": kl_to_uniform(g), "log_rows": math.log(g.size)}
    return {"n_tokens": int(stats.n_tokens), "units": rows, "global_table": glob,
            "layer_out_std": layer_std}


def diagnose(model, batches, *, progress: bool = True) -> tuple[dict, MemoryStats]:
    """(``summarize`` dict with the Tucker singular values, the raw ``MemoryStats``)."""
    stats = collect(model, batches, progress=progress)
    return summarize(stats, tucker_singular_values(model)), stats


def _fmt(x, spec=".3g") -> str:
    return "-" if x is None else format(x, spec)


def markdown_table(summary: dict) -> str:
    """One row per unit (and the pooled shared table): usage, KL, scores, output stds, SVs."""
    head = ("| unit | kind | k->v | rows R | usage | KL (nats) | log R | top-1 mean ± std | "
            "score mean ± std | mem out std | layer out std | λ1/λ2 (heads) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in summary["units"]:
        ratio = ", ".join(_fmt(x, ".2f") for x in r["sv_ratio"]) if "sv_ratio" in r else "-"
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['read_block']}->{r['write_block']} | "
            f"{r['n_rows']} | {r['usage']:.3f} | {r['kl_uniform']:.3f} | {r['log_rows']:.2f} | "
            f"{r['top1_mean']:.3g} ± {r['top1_std']:.2g} | {r['score_mean']:.3g} ± "
            f"{r['score_std']:.2g} | {r['mem_out_std']:.3g} | {r['layer_out_std']:.3g} | "
            f"{ratio} |")
    g = summary["global_table"]
    if g is not None:
        lines.append(f"| shared table (all units) | ultramem_v2 | - | {g['n_rows']} | "
                     f"{g['usage']:.3f} | {g['kl_uniform']:.3f} | {g['log_rows']:.2f} | - | - | "
                     "- | - | - |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_slot_access(stats: MemoryStats, path: str) -> str:
    """Per unit (and the pooled shared table), access frequency c_i / sum(c) of the rows sorted
    in decreasing order vs rank / R, log y; dashed: uniform 1/R. Untouched rows are not drawn."""
    plt = _plt()
    panels = [(u.name, stats.counts[u.name]) for u in stats.units]
    g = stats.global_counts()
    if g is not None:
        panels.append(("shared table", g))
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.7 * nrows), squeeze=False,
                             sharey=True)
    for ax, (name, c) in zip(axes.flat, panels):
        freq = np.sort(np.asarray(c, np.float64))[::-1] / max(c.sum(), 1)
        x = (np.arange(freq.size) + 0.5) / freq.size
        nz = freq > 0
        ax.plot(x[nz], freq[nz], lw=1.2)
        ax.axhline(1.0 / freq.size, ls="--", color="gray", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlim(0, 1)
        ax.set_title(f"{name}\nusage {usage(c):.3f}, KL {kl_to_uniform(c):.3f}", fontsize=8)
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("row rank / R (sorted by access)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("access frequency", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_unit_summary(summary: dict, path: str) -> str:
    """Bar charts per unit: usage, KL to uniform (with log R as a tick), top-1 score mean ± std,
    and mean lambda_1/lambda_2 over heads when any unit has a Tucker core."""
    plt = _plt()
    units = summary["units"]
    names = [u["name"] for u in units]
    x = np.arange(len(units))
    panels = [("usage", [u["usage"] for u in units], None),
              ("KL(freq || uniform) [nats]", [u["kl_uniform"] for u in units], None),
              ("top-1 score (mean ± std)", [u["top1_mean"] for u in units],
               [u["top1_std"] for u in units])]
    if any("sv_ratio" in u for u in units):
        panels.append(("λ1/λ2 (mean over heads)",
                       [float(np.mean(u["sv_ratio"])) if "sv_ratio" in u else np.nan
                        for u in units], None))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(3.0, 0.45 * len(units) + 1.5)
                                                      * len(panels), 3.6), squeeze=False)
    for ax, (title, vals, err) in zip(axes[0], panels):
        ax.bar(x, vals, yerr=err, color="tab:blue", alpha=0.8, capsize=2)
        if title.startswith("KL"):
            ax.scatter(x, [u["log_rows"] for u in units], marker="_", color="k", s=80,
                       label="log R (max)")
            ax.legend(fontsize=7)
        if title.startswith("usage"):
            ax.set_ylim(0, 1.05)
        if title.startswith("λ1"):
            ax.axhline(4.0, ls="--", color="gray", lw=0.8, label="4 (V2 Fig. 8)")
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
