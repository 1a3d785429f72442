"""Model FLOPs per token, counted from the config (MaxText convention).

Training FLOPs = 3 x forward matmul FLOPs (forward + 2x backward); causal attention scores are
counted half (2 * T * H * D per token per layer for QK^T and AV together); embedding gathers,
norms and elementwise ops are not counted; remat recomputation is not counted (model FLOPs, not
hardware FLOPs). Later modules (MoE, memory layers, connections) add their own terms here.

Looped stacks (``model.stack="looped"``, Ouro): the shared blocks run T times (T = the configured
``stack_kwargs.loops``), so every per-layer term (attention, FFN, memory units) is multiplied by
T, and the exit gate adds 2 d FLOPs per loop (``exit_gate``). The head is counted T times too:
the training objective calls ``model(inputs)`` with the default ``return_loop_logits=True``, which
evaluates the head on every loop's state (the released exit rules and the Stage I loss read all
loops' logits). Pass ``loops`` / ``head_calls`` to count another setting, e.g. decoding with
early exit at an average of t loops: ``loops=t, head_calls=1``.
"""
from __future__ import annotations

from seedjax.models import lm as _lm  # noqa: F401  (registers all factories)
from seedjax.models.config import LMConfig
from seedjax.models.registry import lookup


def _configured_loops(cfg: LMConfig) -> int:
    if cfg.stack != "looped":
        return 1
    from seedjax.nn.looped import LoopConfig
    return LoopConfig(**dict(cfg.stack_kwargs)).loops


def lm_forward_flops_per_token(cfg: LMConfig, seq_len: int, *, loops: float | None = None,
                               head_calls: float | None = None) -> dict[str, float]:
    """Forward FLOPs per token by component. Looped stacks: per-layer terms x ``loops``
    (default the configured T), head x ``head_calls`` (default T: every loop's logits, as the
    training objective computes them), plus the exit gate per loop."""
    looped = cfg.stack == "looped"
    if not looped and (loops is not None or head_calls is not None):
        raise ValueError(f"loops / head_calls need model.stack='looped' (got {cfg.stack!r})")
    out = _single_pass_flops(cfg, seq_len)
    if not looped:
        return out
    t = _configured_loops(cfg) if loops is None else loops
    heads = t if head_calls is None else head_calls
    out = {k: (v * heads if k == "head" else v * t) for k, v in out.items()}
    if dict(cfg.stack_kwargs).get("exit_gate", True):
        out["exit_gate"] = t * 2 * cfg.d_model
    return out


def _single_pass_flops(cfg: LMConfig, seq_len: int) -> dict[str, float]:
    """One pass through the blocks and one head call."""
    d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.resolved_head_dim
    L = cfg.n_layers
    if cfg.mixer != "attention":
        raise ValueError(f"no FLOP formula for model.mixer={cfg.mixer!r}; add one in "
                         "seedjax/train/flops.py")
    out = {
        "attn_proj": L * 2 * d * (2 * h * hd + 2 * kv * hd),   # q, o and k, v projections
        "attn_scores": L * 2 * seq_len * h * hd,                 # causal: half of 4*T*H*D
        "head": 2 * d * cfg.vocab_size,
    }
    if cfg.ffn == "swiglu":
        out["mlp"] = L * 2 * 3 * d * cfg.ffn_kwargs.get("mlp_dim", cfg.mlp_dim)
    else:
        for part, flops in _factory_flops("ffn", cfg.ffn, cfg).items():
            out[part] = L * flops
    for kind in ("embed", "head"):  # optional terms (over-encoding projections, extra heads)
        extra = getattr(lookup(kind, getattr(cfg, kind)), "flops_per_token", None)
        for part, flops in (extra(cfg) if extra is not None else {}).items():
            out[part] = out.get(part, 0) + flops
    if cfg.memory != "none":
        n_units = len(cfg.memory_pairs)
        for part, flops in _factory_flops("memory", cfg.memory, cfg).items():
            out[part] = out.get(part, 0) + n_units * flops
    return out


def _factory_flops(kind: str, name: str, cfg: LMConfig) -> dict[str, float]:
    flops = getattr(lookup(kind, name), "flops_per_token", None)
    if flops is None:
        raise ValueError(f"no FLOP formula for model.{kind}={name!r}: give its factory a "
                         "flops_per_token(cfg) attribute (see seedjax/models/registry.py)")
    return flops(cfg)


def lm_train_flops_per_token(cfg: LMConfig, seq_len: int, *, backward: bool = True) -> float:
    """Forward + backward (3x forward); ``backward=False`` for objectives that do not
    differentiate through the model (Ouro Stage II: only the gate learns), forward only."""
    return (3.0 if backward else 1.0) * sum(lm_forward_flops_per_token(cfg, seq_len).values())


def lm_param_count(cfg: LMConfig) -> int:
    """Parameters of the default recipe (tied head), for reports."""
    d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.resolved_head_dim
    per_layer = d * (2 * h * hd + 2 * kv * hd) + 3 * d * cfg.mlp_dim + 2 * d
    head = 0 if cfg.head == "tied" else d * cfg.vocab_size
    return cfg.vocab_size * d + cfg.n_layers * per_layer + d + head
