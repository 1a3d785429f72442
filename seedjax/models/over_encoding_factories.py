"""The "over_encoding" embed (Over-Tokenized Transformer, ``seedjax.nn.over_encoding``).

Select with ``model.embed = "over_encoding"`` and ``model.embed_kwargs`` = the fields of
``OverEncodingConfig`` other than vocab_size / d_model (taken from the model), e.g. OE-12.8M of
the paper's OLMoE-1.3B (n = 3, k = 2):

    model.embed = "over_encoding"
    model.embed_kwargs = {"m": 12_800_000, "n": 3, "k": 2}
    train.lr_multipliers = {"ngram_tables": 1.0}     # the tables' own lr group (optional)

``init_std`` defaults to the model's. The trainer logs the tables' hits and collisions on the
train tokens at step 0 (``data_diagnostics``; split "diagnostics" of metrics.jsonl). The LM passes ``segment_ids`` (boundary="segment") and keeps
the decode history in its cache (``seedjax.models.lm.DecodeCache``).
"""
from __future__ import annotations

from flax import nnx

from seedjax.models.config import LMConfig
from seedjax.models.registry import register
from seedjax.nn.over_encoding import OverEncodingConfig, OverEncodingEmbed
from seedjax.ops.ngram_usage import table_usage, usage_metrics


def over_encoding_config(cfg: LMConfig, **kw) -> OverEncodingConfig:
    if "orders" in kw and kw["orders"] is not None:
        kw["orders"] = tuple(kw["orders"])
    kw.setdefault("init_std", cfg.init_std)
    return OverEncodingConfig(vocab_size=cfg.vocab_size, d_model=cfg.d_model, **kw)


@register("embed", "over_encoding")
def over_encoding(cfg: LMConfig, *, rngs: nnx.Rngs, **kw):
    return OverEncodingEmbed(over_encoding_config(cfg, **kw), dtype=cfg.compute_dtype, rngs=rngs)


def _flops(cfg: LMConfig) -> dict[str, float]:
    """Forward FLOPs per token: the slice projections, 2 S w D (lookups are not counted)."""
    c = over_encoding_config(cfg, **dict(cfg.embed_kwargs))
    return {"oe_proj": 2 * c.n_slices * c.slice_width * cfg.d_model}


def _data_diagnostics(cfg: LMConfig, tokens) -> dict[str, float]:
    """Per-slice table hits and collisions on the train tokens (logged by the trainer at step 0:
    ``oe/collision_rate/s<slice>`` etc., ``seedjax.ops.ngram_usage``)."""
    return usage_metrics(table_usage(over_encoding_config(cfg, **dict(cfg.embed_kwargs)), tokens))


over_encoding.flops_per_token = _flops
over_encoding.data_diagnostics = _data_diagnostics
