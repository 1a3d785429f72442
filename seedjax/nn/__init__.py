"""Flax NNX building blocks. Importing this package does not import optax, orbax or grain."""
from seedjax.nn.attention import CausalSelfAttention, KVCache
from seedjax.nn.connections import (FracConnection, HyperConnection, ManifoldHyperConnection,
                                    Residual, expand_streams, merge_fracs, reduce_streams,
                                    sinkhorn, split_fracs)
from seedjax.nn.embeddings import OutputHead, TokenEmbedding
from seedjax.nn.memory import PKMConfig, ProductKeyMemory
from seedjax.nn.looped import (ExitGate, LoopConfig, LoopedStack, exit_log_probs, exit_probs,
                               threshold_exit_steps)
from seedjax.nn.mlp import SwiGLU
from seedjax.nn.norms import DyT, LayerNorm, RMSNorm, SeeDNorm
from seedjax.nn.params import param, param_metadata
from seedjax.nn.partitioning import activation_rules, constrain
from seedjax.nn.rope import apply_rope

__all__ = [
    "CausalSelfAttention", "KVCache", "Residual", "HyperConnection", "FracConnection",
    "ManifoldHyperConnection", "expand_streams", "reduce_streams", "split_fracs", "merge_fracs",
    "sinkhorn", "SeeDNorm", "DyT", "PKMConfig", "ProductKeyMemory", "OutputHead", "TokenEmbedding", "SwiGLU",
    "LayerNorm", "RMSNorm", "ExitGate", "LoopConfig", "LoopedStack", "exit_log_probs",
    "exit_probs", "threshold_exit_steps", "param", "param_metadata", "activation_rules", "constrain", "apply_rope",
]
