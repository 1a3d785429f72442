"""The "over_decoding" head (Over-Tokenized Transformer, ``seedjax.nn.over_decoding``): extra
future-token heads used only by the training loss, dropped at inference (eval and generation call
the model without targets and get the ordinary next-token logits).

Config lines (``model.head_kwargs`` are the fields of ``OverDecodingConfig`` other than
vocab_size / d_model; ``init_std`` defaults to the model's):

    # App. C product decomposition (Alg. 2) as in Marin's runs: one extra head for x_{t+2} with a
    # D x D projection, lambda_2 = 0.1
    model.head = "over_decoding"
    model.head_kwargs = {"mode": "product", "n": 2, "rank": 256, "weights": [0.1]}

    # the paper's OT = OE + MTP-DS: DeepSeek-V3 sequential MTP, one module, weight 0.1,
    # on top of an over-encoding embed (whose embeddings of x_{t+1} the MTP module reads)
    model.embed = "over_encoding"
    model.embed_kwargs = {"m": 12_800_000, "n": 3, "k": 2}
    model.head = "over_decoding"
    model.head_kwargs = {"mode": "mtp_ds", "depth": 1, "weights": 0.1}

    # the CFG experiment's n-gram decoding (variant (iii)): a joint 3^3-way softmax, small V only
    model.head = "over_decoding"
    model.head_kwargs = {"mode": "ngram_joint", "n": 3}

Defaults: mode "product", n 2, weights 0.1 per extra head (the paper's Sec. 4.3 / Table 5
setting), rank None (full D -> V extra tables), base "tied" (the LM's default head), eos_id None
(the extra losses cross document boundaries like the next-token loss). The logged metrics are
``aux/od/...`` (weighted, see ``seedjax.nn.over_decoding``); ``ce`` stays the next-token CE.
mtp_ds builds each module's transformer block with the LM's ``Block`` (layer index n_layers + k - 1,
no memory unit), so it follows the model's mixer / FFN / norm / connection recipe. Needs
``model.stack = "plain"`` (a looped stack has no training-only head losses).
"""
from __future__ import annotations

from flax import nnx

from seedjax.models.config import LMConfig
from seedjax.models.registry import lookup, register
from seedjax.nn.over_decoding import OverDecodingConfig, OverDecodingHead


def over_decoding_config(cfg: LMConfig, **kw) -> OverDecodingConfig:
    if isinstance(kw.get("weights"), list):
        kw["weights"] = tuple(kw["weights"])
    kw.setdefault("init_std", cfg.init_std)
    kw.setdefault("norm_eps", cfg.norm_eps)
    return OverDecodingConfig(vocab_size=cfg.vocab_size, d_model=cfg.d_model, **kw)


@register("head", "over_decoding")
def over_decoding(cfg: LMConfig, *, rngs: nnx.Rngs, **kw):
    c = over_decoding_config(cfg, **kw)
    if cfg.stack != "plain":
        raise ValueError(f"model.head='over_decoding' needs model.stack='plain' (got "
                         f"{cfg.stack!r}): a looped stack has no training-only head losses")
    blocks = ()
    if c.mode == "mtp_ds":
        from seedjax.models.lm import Block  # lazy: lm.py imports the registry's factories
        blocks = [Block(cfg, cfg.n_layers + k, rngs=rngs) for k in range(c.depth)]
    return OverDecodingHead(c, dtype=cfg.compute_dtype, rngs=rngs, blocks=blocks,
                            connection=lookup("connection", cfg.connection), connection_cfg=cfg)


def _block_flops(cfg: LMConfig, seq_len: int) -> float:
    """Forward FLOPs per token of one extra block (the same terms as seedjax.train.flops)."""
    d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.resolved_head_dim
    if cfg.mixer != "attention":
        raise ValueError(f"no FLOP formula for model.mixer={cfg.mixer!r} in the mtp_ds block")
    flops = 2 * d * (2 * h * hd + 2 * kv * hd) + 2 * seq_len * h * hd
    if cfg.ffn == "swiglu":
        return flops + 2 * 3 * d * cfg.ffn_kwargs.get("mlp_dim", cfg.mlp_dim)
    ffn = getattr(lookup("ffn", cfg.ffn), "flops_per_token", None)
    if ffn is None:
        raise ValueError(f"no FLOP formula for model.ffn={cfg.ffn!r} (the mtp_ds block's FFN)")
    return flops + sum(ffn(cfg).values())


def _flops(cfg: LMConfig, seq_len: int | None = None) -> dict[str, float]:
    """Forward FLOPs per token of the extra heads (the next-token head is counted as "head" by
    seedjax.train.flops). Every extra prediction is counted at every position (the last j - 1
    positions of a window have none: a slight overcount). mtp_ds's attention scores use
    ``seq_len`` (default model.max_seq_len)."""
    c = over_decoding_config(cfg, **dict(cfg.head_kwargs))
    d, v = cfg.d_model, cfg.vocab_size
    if c.mode == "product":
        one = 2 * d * v if c.rank is None else 2 * d * c.rank + 2 * c.rank * v
        return {"od_heads": (c.n - 1) * one}
    if c.mode == "ngram_joint":  # the joint table [D, V^n] replaces the [D, V] head
        return {"od_joint_head": 2 * d * (c.joint_classes - v)}
    t = cfg.max_seq_len if seq_len is None else seq_len
    return {"od_mtp_proj": c.depth * 2 * (2 * d) * d,
            "od_mtp_block": c.depth * _block_flops(cfg, t),
            "od_mtp_head": c.depth * 2 * d * v}


over_decoding.flops_per_token = _flops  # read by seedjax.train.flops (head terms)
