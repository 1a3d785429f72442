"""Connection diagnostics: representation collapse, unfolded connection matrices, signal gain.

All functions take a model (``seedjax.models.LM``) and a token batch ``tokens`` int32 [B, T];
S = 2L sublayers, numbered k = 1..S (odd k = attention, even k = FFN; block l holds sublayers
2l+1 and 2l+2), N = B*T tokens. ``chunk`` (optional) forwards at most that many rows at once.
The per-token ("products") variants use at most ``max_tokens`` tokens (fixed random subsample).

* ``branch_input_cosine`` -> cos [S-1, N]: row k-2 is cos(h^k, h^{k-1}) per token for k = 2..S,
  h^k = the branch input of sublayer k *before* the block norm (HC Fig. 3 / FC Fig. 2; E3).
* ``sublayer_coefficients`` -> ``Coefficients`` with, per sublayer and token, the HC matrices
      read  [S, N, n, r]  A_m as [source stream, read slot] (r = 1; FC: Y with r = m)
      res   [S, N, n, n]  A_r as [source, destination]  (new state = A_r^T H)
      write [S, N, n]     B (beta; mHC: H_post)
  from each connection's ``.coefficients(H)`` on the recorded ``streams`` (N = 1 for static
  connections). mHC: read = H_pre, res = R (= H_res^T, see seedjax.nn.connections), write =
  H_post. Plain residual: n = 1 and A_m = A_r = B = 1.
* ``unfold_connections`` (HC section 1.8, Eqs. 20/27-29; E4). M [n, k] holds how much of T^j's
  output sits in each stream (layer 0 = embedding, T^0 = identity):
      M = 1_{n x 1}
      for k = 1..S:  C0[k, :k] = A_m^T M;   M = A_r^T M;   C^(i)[k] = M[i];   M = [M | B^T]
      C0[S+1] = f^T M,  C^(i)[S+1] = M[i]
  f = reduction weights before the final norm (HC/mHC "sum": 1; "mean": 1/n; FC concatenates
  its fractions: 1/m). C0 is [S+2, S+1]: row k = contributions to h_0^k (row 0 is empty),
  the last row = the reduced final hidden state; C^(i) row k = stream i after sublayer k's
  mixing, before T^k is written (Eq. 29). FC reads m fractions with Y; its read weight per
  stream is the mean over read slots (the unfolding ignores which slot a fraction lands in).
  Identical streams at init make HC's last row n (the sum); the final norm removes that scale.
* ``composite_gain`` (mHC Figs. 3/7; E6): P_k = A_r^{kT} ([destination, source]); composite
  G_l = P_S ... P_l (sublayer l to the end); forward gain = max_i |sum_j G_ij| (row sums),
  backward gain = max_j |sum_i G_ij| (column sums). ``average="weights"`` averages A_r over
  tokens first (the spec's E6 recipe); ``"products"`` gains per token, then averaged (the mHC
  paper's "averaged over the tokens of one sequence").
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from seedjax.nn.connections import (FracConnection, HyperConnection, ManifoldHyperConnection,
                                    Residual)

AVERAGES = ("weights", "products")


@dataclasses.dataclass
class Coefficients:
    """Per-sublayer HC coefficients (see the module docstring for the shapes)."""
    kind: str                 # "residual" | "hyper" | "frac" | "mhc"
    read: np.ndarray          # [S, N, n, r]
    res: np.ndarray           # [S, N, n, n] ([source, destination])
    write: np.ndarray         # [S, N, n]
    final: np.ndarray         # [n] stream weights of the final reduction
    dynamic: bool
    stream_share: np.ndarray  # [S, n] token-mean share ||H_s|| / sum_s ||H_s|| entering k

    @property
    def n_sublayers(self) -> int:
        return self.res.shape[0]

    @property
    def n_streams(self) -> int:
        return self.res.shape[-1]

    @property
    def out_scale(self) -> float:
        """sum of the final reduction weights (HC sum: n; FC, mean, residual: 1)."""
        return float(np.sum(self.final))


# --------------------------------------------------------------------------- forward records

def connections(model) -> list:
    """The 2L connection modules in sublayer order (loop or scanned layer stacks)."""
    layers = model.layers
    if layers.scan:
        blocks = [nnx.merge(layers.graphdef, jax.tree.map(lambda x, i=i: x[i], layers.stacked))
                  for i in range(layers.n_layers)]
    else:
        blocks = list(layers.blocks)
    return [c for b in blocks for c in (b.attn_conn, b.ffn_conn)]


def _records(model, tokens, chunk: int | None):
    """Yields (streams [S, b, T, ...], branch_inputs [S, b, T, d]) per chunk of ``chunk`` rows."""
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
    step = tokens.shape[0] if chunk is None else int(chunk)
    for start in range(0, tokens.shape[0], step):
        inter = model(tokens[start:start + step], return_intermediates=True).intermediates
        s, b = inter["streams"], inter["branch_inputs"]
        yield (s.reshape(-1, *s.shape[2:]), b.reshape(-1, *b.shape[2:]))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine over the last axis in float64; exactly 1 for identical rows."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    dot, na, nb = (a * b).sum(-1), (a * a).sum(-1), (b * b).sum(-1)
    return np.clip(dot / np.maximum(np.sqrt(na * nb), 1e-300), -1.0, 1.0)


def branch_input_cosine(model, tokens, *, chunk: int | None = None) -> np.ndarray:
    """cos [2L-1, N]: per token cos(h^k, h^{k-1}) of adjacent sublayers' branch inputs."""
    out = []
    for _, branch in _records(model, tokens, chunk):
        x = np.asarray(branch, np.float32).reshape(branch.shape[0], -1, branch.shape[-1])
        out.append(np.stack([_cosine(x[k], x[k - 1]) for k in range(1, x.shape[0])]))
    return np.concatenate(out, axis=1)


def cosine_summary(cos: np.ndarray) -> dict:
    """Per sublayer k = 2..S (the later of the pair): median, p5, p95 and mean over tokens."""
    p5, med, p95 = np.percentile(cos, [5, 50, 95], axis=1)
    return {"sublayer": np.arange(2, cos.shape[0] + 2), "median": med, "p5": p5, "p95": p95,
            "mean": cos.mean(axis=1)}


def _kind(conn) -> str:
    for cls, name in ((HyperConnection, "hyper"), (FracConnection, "frac"),
                      (ManifoldHyperConnection, "mhc"), (Residual, "residual")):
        if isinstance(conn, cls):
            return name
    raise ValueError(f"connection diagnostics support residual/hyper/frac/mhc connections, got "
                     f"{type(conn).__name__}")


def _coeff_rows(conn, kind: str, H) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(read [N, n, r], res [N, n, n], write [N, n]) of one sublayer; N = 1 when static."""
    n = conn.rate
    if kind == "mhc":
        pre, post, res = (np.asarray(a) for a in conn.coefficients(H))
        read = pre[..., None]
    else:
        alpha, post = (np.asarray(a) for a in conn.coefficients(H))
        r = n if kind == "frac" else 1
        read, res = alpha[..., :r], alpha[..., r:]
    return (read.reshape(-1, n, read.shape[-1]), res.reshape(-1, n, n), post.reshape(-1, n))


def sublayer_coefficients(model, tokens, *, chunk: int | None = None) -> Coefficients:
    """Per-token coefficients of every sublayer, from ``.coefficients(streams)``."""
    conns = connections(model)
    S, kind = len(conns), _kind(conns[0])
    if kind == "residual":
        one = np.ones((S, 1, 1), np.float32)
        return Coefficients(kind, one[..., None], one[..., None], one, np.ones(1, np.float32),
                            False, np.ones((S, 1), np.float32))
    n, dynamic = conns[0].rate, bool(conns[0].dynamic)
    rows: list[list] = [[] for _ in range(S)]
    norms = []
    for streams, _ in _records(model, tokens, chunk):
        for k, conn in enumerate(conns):
            if dynamic or not rows[k]:
                rows[k].append(_coeff_rows(conn, kind, streams[k]))
        s = np.linalg.norm(np.asarray(streams, np.float32), axis=-1)  # [S, b, T, n]
        norms.append((s / np.maximum(s.sum(-1, keepdims=True), 1e-30)).reshape(S, -1, n))
    read, res, write = (np.stack([np.concatenate([r[i] for r in per], 0) for per in rows])
                        for i in range(3))
    reduce = dict(model.cfg.connection_kwargs).get("reduce", "sum")
    final = np.full(n, 1.0 / n if kind == "frac" or reduce == "mean" else 1.0, np.float32)
    share = np.concatenate(norms, axis=1).mean(axis=1)
    return Coefficients(kind, read, res, write, final, dynamic, share)


def coefficient_summary(c: Coefficients) -> dict:
    """E5 statistics per sublayer: ||mean A_r - I||_F, mean B and A_m (over read slots), the
    token std of A_m, the stream norm shares and the effective number of streams exp(H(share))."""
    p = np.clip(c.stream_share, 1e-12, None)
    return {"res_identity_dev": np.linalg.norm(c.res.mean(1) - np.eye(c.n_streams), axis=(1, 2)),
            "write_mean": c.write.mean(1), "read_mean": c.read.mean(axis=(1, 3)),
            "read_token_std": c.read.std(1).mean(axis=(1, 2)),
            "stream_share": c.stream_share, "effective_streams": np.exp(-(p * np.log(p)).sum(-1))}


# --------------------------------------------------------------------------- unfolding and gain

def _token_view(c: Coefficients, average: str, max_tokens: int, seed: int = 0):
    """(read, res, write) averaged over tokens (N = 1) or on a token subsample."""
    if average not in AVERAGES:
        raise ValueError(f"average={average!r} is not one of {AVERAGES}")
    arrays = (c.read, c.res, c.write)
    N = c.res.shape[1]
    if average == "weights" or N == 1:
        return tuple(a.astype(np.float64).mean(1, keepdims=True) for a in arrays)
    idx = np.arange(N)
    if N > max_tokens:
        idx = np.sort(np.random.default_rng(seed).choice(N, max_tokens, replace=False))
    return tuple(a[:, idx].astype(np.float64) for a in arrays)


def unfold_connections(c: Coefficients, average: str = "weights", *, max_tokens: int = 2048):
    """(C0 [S+2, S+1], [C^(i) [S+2, S+1] for each stream i]) by the section 1.8 recursion.
    ``average="products"`` unfolds per token (at most ``max_tokens``) and averages the results."""
    read, res, write = _token_view(c, average, max_tokens)
    S, N, n = res.shape[:3]
    a_m = read.mean(-1)                                          # [S, N, n]
    C0 = np.zeros((N, S + 2, S + 1))
    P = np.zeros((N, n, S + 2, S + 1))
    M = np.zeros((N, n, S + 1))
    M[:, :, 0] = 1.0
    for k in range(1, S + 1):
        C0[:, k] = np.einsum("ns,nsj->nj", a_m[k - 1], M)
        M = np.einsum("nsd,nsj->ndj", res[k - 1], M)
        P[:, :, k] = M
        M[:, :, k] = write[k - 1]
    C0[:, S + 1] = np.einsum("s,nsj->nj", c.final.astype(np.float64), M)
    P[:, :, S + 1] = M
    return C0.mean(0), list(P.mean(0))


def unfolded_summary(C0: np.ndarray) -> dict:
    """E4 scalars: mean |c_kj| by distance k-j (rows 1..S), |c_k0| and |c_k2| (bottom reuse), the
    final row (c_final,0 = embedding in the output) and mean |column| of attention/FFN sources."""
    S = C0.shape[1] - 1
    k, j = np.tril_indices(S + 1, -1)                            # rows 1..S of C0, j < k
    absC = np.abs(C0)
    decay = np.array([absC[k[k - j == dd], j[k - j == dd]].mean() for dd in range(1, S + 1)])
    col = absC[1:].sum(0) / np.maximum(np.arange(S + 1, 0, -1), 1)  # mean over rows fed
    return {"distance": np.arange(1, S + 1), "decay": decay, "embedding_reuse": absC[1:S + 1, 0],
            "layer2_reuse": absC[3:S + 1, 2] if S >= 3 else np.zeros(0), "final_row": C0[S + 1],
            "final_embedding": float(C0[S + 1, 0]), "attn_column_mean": float(col[1::2].mean()),
            "ffn_column_mean": float(col[2::2].mean()) if S >= 2 else float("nan")}


def _gains(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """G [N, n, n] ([destination, source]) -> (forward, backward) token-mean gains."""
    return (np.abs(G.sum(-1)).max(-1).mean(), np.abs(G.sum(-2)).max(-1).mean())


def composite_gain(c: Coefficients, average: str = "weights", *, max_tokens: int = 2048) -> dict:
    """Forward/backward gains of the composite residual maps G_l = P_S ... P_l for l = 1..S
    (``forward``, ``backward``) and of the single maps P_l (``single_forward/backward``)."""
    _, res, _ = _token_view(c, average, max_tokens)
    P = np.swapaxes(res, -1, -2)                                 # [S, N, destination, source]
    S, N, n = P.shape[:3]
    G = np.broadcast_to(np.eye(n), (N, n, n))
    out = {key: np.zeros(S) for key in ("forward", "backward", "single_forward",
                                        "single_backward")}
    for l in range(S - 1, -1, -1):
        G = G @ P[l]
        out["forward"][l], out["backward"][l] = _gains(G)
        out["single_forward"][l], out["single_backward"][l] = _gains(P[l])
    return {"sublayer": np.arange(1, S + 1), "average": average, **out}


# --------------------------------------------------------------------------- plots

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _int_x(ax):
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def sublayer_labels(S: int) -> list[str]:
    """'emb', 'A1', 'F2', 'A3', ... (attention sublayers odd, FFN even)."""
    return ["emb"] + [f"{'A' if k % 2 else 'F'}{k}" for k in range(1, S + 1)]


def _heatmap(ax, C: np.ndarray, vmax: float, title: str, out_label: str = "out"):
    S = C.shape[1] - 1
    shown = np.ma.masked_array(C[1:], mask=np.triu(np.ones((S + 1, S + 1), bool), 1))
    im = ax.imshow(shown, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="equal")
    cols = sublayer_labels(S)
    rows = cols[1:] + [out_label]
    color = lambda t: "tab:blue" if t[0] == "A" else "tab:orange" if t[0] == "F" else "black"
    ax.set_xticks(range(S + 1), cols, rotation=90, fontsize=7)
    ax.set_yticks(range(S + 1), rows, fontsize=7)
    for tick, t in [*zip(ax.get_xticklabels(), cols), *zip(ax.get_yticklabels(), rows)]:
        tick.set_color(color(t))
    if S + 1 <= 13:
        for r in range(S + 1):
            for j in range(r + 1):
                ax.text(j, r, f"{C[r + 1, j]:.2g}", ha="center", va="center", fontsize=6)
    ax.set_xlabel("source j")
    ax.set_ylabel("sublayer k")
    ax.set_title(title, fontsize=9)
    return im


def plot_unfolded(C0: np.ndarray, path: str, title: str = "", per_stream=None,
                  out_scale: float = 1.0) -> str:
    """Lower-triangular heatmap of C0 (rows: sublayers 1..S and the output; columns: embedding
    and sublayers; A = attention in blue, F = FFN in orange), optionally with the per-stream
    C^(i) panels. The output row is shown divided by ``out_scale`` (e.g. n for HC's stream sum,
    so that it shares the colour scale; labelled "out/n")."""
    plt = _plt()
    C0 = np.array(C0, np.float64)
    C0[-1] /= out_scale
    out_label = "out" if out_scale == 1 else f"out/{out_scale:g}"
    mats = [C0] + list(per_stream or [])
    vmax = max(float(np.abs(m[1:]).max()) for m in mats) or 1.0
    size = min(2.5 + 0.28 * C0.shape[1], 8.0)
    ncols = min(len(mats), 3)
    nrows = -(-len(mats) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 1.0, size * nrows),
                             squeeze=False, layout="constrained")
    titles = [f"{title} C(0)".strip()] + [f"stream {i}" for i in range(len(mats) - 1)]
    for ax, m, t in zip(axes.flat, mats, titles):
        im = _heatmap(ax, m, vmax, t, out_label if m is C0 else "out")
    for ax in list(axes.flat)[len(mats):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_cosine(summaries: dict, path: str) -> str:
    """Median cos(h^k, h^{k-1}) with a p5-p95 band per model vs sublayer k."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, s in summaries.items():
        x = np.asarray(s["sublayer"])
        (line,) = ax.plot(x, s["median"], "o-", ms=3, lw=1.2, label=name)
        ax.fill_between(x, s["p5"], s["p95"], color=line.get_color(), alpha=0.2)
    _int_x(ax)
    ax.set_xlabel("sublayer k (odd: attention, even: FFN)")
    ax.set_ylabel("cos(branch input k, k-1)")
    ax.set_title("representation similarity of adjacent sublayers (median, p5-p95)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_gain(gains: dict, path: str) -> str:
    """Composite (sublayer l to the end) and single-sublayer gains per model, log-scale y."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0), sharey=True)
    for name, g in gains.items():
        x = np.asarray(g["sublayer"])
        for ax, pre in zip(axes, ("", "single_")):
            (line,) = ax.plot(x, g[pre + "forward"], "o-", ms=3, lw=1.2, label=f"{name} forward")
            ax.plot(x, g[pre + "backward"], "s--", ms=3, lw=1.0, color=line.get_color(),
                    label=f"{name} backward")
    from matplotlib.ticker import FuncFormatter
    fmt = FuncFormatter(lambda v, _: f"{v:.3g}")
    for ax, t in zip(axes, ("composite map, sublayer l to the end", "single sublayer map")):
        ax.set_yscale("log")
        ax.set_title(t, fontsize=9)
        _int_x(ax)
    lo, hi = axes[0].get_ylim()
    for ax in axes:  # label minor ticks only within a decade (otherwise they overlap)
        ax.yaxis.set_major_formatter(fmt)
        if hi / max(lo, 1e-300) < 10:
            ax.yaxis.set_minor_formatter(fmt)
        ax.set_xlabel("sublayer l")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("gain (max |row sum| fwd, max |col sum| bwd)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
