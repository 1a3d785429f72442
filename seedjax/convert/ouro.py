"""Ouro (ByteDance Seed LoopLM, arXiv 2510.25741) checkpoints <-> seedjax.

    from seedjax.convert.ouro import load_hf, save_hf
    model = load_hf("path/to/Ouro-1.4B", dtype=jnp.float32)   # config.json + *.safetensors
    out = model(tokens)          # LMOutput: logits by the checkpoint's exit rule, loop_logits
                                 # [T, B, S, V], exit_probs [B, S, T]
    save_hf(model, "out_dir")    # config.json + model.safetensors in the published layout

The directory holds ``config.json`` and either ``model.safetensors`` or sharded files listed in
``model.safetensors.index.json`` (bf16 or f32). Every model value is read from config.json: a
missing field is a ValueError naming it (the ``OuroConfig`` class defaults are Qwen-like and
wrong for the released models, so they are never used). Unsupported values (another activation,
RoPE scaling, sliding windows, attention biases) are ValueErrors too.

Tensor mapping (PyTorch ``Linear`` weights are [out, in]; seedjax kernels are [in, out]):

==============================================================  ==========================================
checkpoint                                                      seedjax parameter
==============================================================  ==========================================
model.embed_tokens.weight [V, D]                                embed.table [V, D]
model.layers.{l}.self_attn.q_proj.weight [H*hd, D]              layers.body.blocks.{l}.attn.wq [D, H, hd]
model.layers.{l}.self_attn.{k,v}_proj.weight [K*hd, D]          ...attn.wk / attn.wv [D, K, hd]
model.layers.{l}.self_attn.o_proj.weight [D, H*hd]              ...attn.wo [H, hd, D]
model.layers.{l}.mlp.{gate,up}_proj.weight [F, D]               ...ffn.w_gate / ffn.w_up [D, F]
model.layers.{l}.mlp.down_proj.weight [D, F]                    ...ffn.w_down [F, D]
model.layers.{l}.input_layernorm.weight [D]                     ...attn_norm.scale       (pre-attention)
model.layers.{l}.input_layernorm_2.weight [D]                   ...attn_post_norm.scale  (post-attention)
model.layers.{l}.post_attention_layernorm.weight [D]            ...ffn_norm.scale        (PRE-MLP: the trap)
model.layers.{l}.post_attention_layernorm_2.weight [D]          ...ffn_post_norm.scale   (post-MLP)
model.norm.weight [D]                                           final_norm.scale (after every loop)
model.early_exit_gate.weight [1, D] / .bias [1]                 layers.exit_gate.kernel [D] / .bias []
lm_head.weight [V, D] (absent if tie_word_embeddings)           head.proj.kernel [D, V]
==============================================================  ==========================================

With ``scan_layers=True`` the per-layer tensors are stacked into ``layers.body.stacked.*``.
A missing, unexpected or wrongly shaped tensor is a ValueError naming the tensor and both shapes.
Loading and saving are bit-exact (transposes and reshapes only; the dtype changes only where
asked). Numerics differences from the released code: none in float32; in bf16 seedjax's RMSNorm
multiplies the gain in float32 before the cast back (the released norm casts first).
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, NamedTuple

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from seedjax.models import LM, LMConfig
from seedjax.nn.looped import LoopConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

# config.json fields that must be present (no class-default fallback); rope_theta is checked
# separately (top level or inside rope_parameters)
REQUIRED_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size",
                   "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                   "hidden_act", "rms_norm_eps", "max_position_embeddings", "total_ut_steps",
                   "early_exit_threshold", "tie_word_embeddings")

_DTYPE_NAMES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def _dtype_name(dtype: Any, field: str) -> str:
    if isinstance(dtype, str):
        name = dtype
    else:
        try:
            name = jnp.dtype(dtype).name
        except TypeError:
            name = repr(dtype)
    if name not in _DTYPE_NAMES:
        raise ValueError(f"{field}={dtype!r} is not allowed; allowed: {sorted(_DTYPE_NAMES)}")
    return name


# ----------------------------------------------------------------------------- config

def _require(d: dict, name: str) -> Any:
    if name not in d:
        raise ValueError(f"config.json has no required field {name!r} (seedjax never falls back "
                         "to OuroConfig class defaults)")
    return d[name]


def _rope_theta(d: dict) -> float:
    top = d.get("rope_theta")
    params = d.get("rope_parameters") or {}
    nested = params.get("rope_theta")
    if top is None and nested is None:
        raise ValueError("config.json has no required field 'rope_theta' (top level or in "
                         "'rope_parameters')")
    if top is not None and nested is not None and float(top) != float(nested):
        raise ValueError(f"config.json rope_theta={top} disagrees with "
                         f"rope_parameters.rope_theta={nested}")
    rope_type = params.get("rope_type", "default")
    if rope_type != "default" or d.get("rope_scaling") not in (None, {}):
        raise ValueError(f"config.json rope_parameters.rope_type={rope_type!r} / rope_scaling="
                         f"{d.get('rope_scaling')!r}: only unscaled ('default') RoPE is supported")
    return float(top if top is not None else nested)


def config_from_hf(d: dict, *, dtype: Any = jnp.float32, scan_layers: bool = False,
                   remat: bool = False, max_seq_len: int | None = None) -> LMConfig:
    """The ``LMConfig`` of an Ouro ``config.json`` dict (every model value read from ``d``)."""
    for name in REQUIRED_FIELDS:
        _require(d, name)
    if d["model_type"] != "ouro":
        raise ValueError(f"config.json model_type={d['model_type']!r}; expected 'ouro'")
    if d["hidden_act"] != "silu":
        raise ValueError(f"config.json hidden_act={d['hidden_act']!r}; only 'silu' (SwiGLU) "
                         "is supported")
    if d.get("use_sliding_window"):
        raise ValueError("config.json use_sliding_window=true is not supported")
    layer_types = d.get("layer_types")
    if layer_types is not None and any(t != "full_attention" for t in layer_types):
        raise ValueError(f"config.json layer_types={layer_types!r}: only 'full_attention'")
    for flag in ("attention_bias", "mlp_bias"):
        if d.get(flag):
            raise ValueError(f"config.json {flag}=true is not supported (Ouro has no biases)")
    q = d["early_exit_threshold"]
    rule = d.get("seedjax_exit_rule", "threshold" if q is not None else "last")
    stack_kwargs = {"loops": d["total_ut_steps"], "exit_gate": True, "exit_rule": rule}
    if q is not None:
        stack_kwargs["exit_threshold"] = q
    heads = d["num_attention_heads"]
    head_dim = d.get("head_dim")
    if head_dim is not None and head_dim * heads == d["hidden_size"]:
        head_dim = None  # the default split; keeps the config canonical
    try:
        LoopConfig(**stack_kwargs)
        return LMConfig(
            vocab_size=d["vocab_size"], d_model=d["hidden_size"], n_layers=d["num_hidden_layers"],
            n_heads=heads, n_kv_heads=d["num_key_value_heads"], head_dim=head_dim,
            mlp_dim=d["intermediate_size"],
            max_seq_len=d["max_position_embeddings"] if max_seq_len is None else max_seq_len,
            rope_theta=_rope_theta(d), qk_norm=False, norm_eps=float(d["rms_norm_eps"]),
            # initializer_range only seeds re-initialisation (e.g. of a new gate), never the
            # loaded weights; the LMConfig default stands in when a config.json omits it
            init_std=float(d.get("initializer_range", LMConfig.init_std)),
            dtype=_dtype_name(dtype, "dtype"), scan_layers=scan_layers, remat=remat,
            sandwich_norm=True, embed="token", norm="rmsnorm", mixer="attention", ffn="swiglu",
            connection="residual", head="tied" if d["tie_word_embeddings"] else "untied",
            stack="looped", stack_kwargs=stack_kwargs)
    except ValueError as e:
        raise ValueError(f"config.json describes an invalid model: {e}") from e


def _check_ouro_layout(cfg: LMConfig) -> None:
    want = dict(stack="looped", sandwich_norm=True, embed="token", norm="rmsnorm",
                mixer="attention", ffn="swiglu", connection="residual", memory="none",
                qk_norm=False)
    for field, value in want.items():
        if getattr(cfg, field) != value:
            raise ValueError(f"model.{field}={getattr(cfg, field)!r} cannot be written as an "
                             f"Ouro checkpoint (needs {value!r})")
    if cfg.head not in ("tied", "untied"):
        raise ValueError(f"model.head={cfg.head!r} cannot be written as an Ouro checkpoint")
    for kind in ("embed", "norm", "mixer", "ffn", "head"):
        if dict(getattr(cfg, f"{kind}_kwargs")):
            raise ValueError(f"model.{kind}_kwargs={dict(getattr(cfg, f'{kind}_kwargs'))} cannot "
                             "be written as an Ouro checkpoint (needs {})")
    if not dict(cfg.stack_kwargs).get("exit_gate", True):
        raise ValueError("model.stack_kwargs.exit_gate=False: an Ouro checkpoint has a gate")


def hf_config(cfg: LMConfig, *, dtype: str = "float32") -> dict:
    """The Ouro ``config.json`` dict of a seedjax looped LM config."""
    _check_ouro_layout(cfg)
    sk = dict(cfg.stack_kwargs)
    rule = sk.get("exit_rule", "threshold")
    q = float(sk.get("exit_threshold", 1.0)) if rule == "threshold" else None
    d = {
        "architectures": ["OuroForCausalLM"], "model_type": "ouro",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads,
        "hidden_act": "silu", "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "total_ut_steps": int(sk.get("loops", 4)), "early_exit_threshold": q,
        "tie_word_embeddings": cfg.head == "tied", "initializer_range": cfg.init_std,
        "attention_dropout": 0.0, "use_cache": True, "use_sliding_window": False,
        "sliding_window": None, "max_window_layers": cfg.n_layers,
        "layer_types": ["full_attention"] * cfg.n_layers,
        "torch_dtype": dtype, "dtype": dtype,
    }
    if cfg.head_dim is not None:
        d["head_dim"] = cfg.head_dim
    if rule == "weighted":  # not expressible in the released config; kept for the round trip
        d["seedjax_exit_rule"] = "weighted"
    return d


# ----------------------------------------------------------------------------- tensor mapping

class TensorSpec(NamedTuple):
    hf_name: str
    key: str                      # seedjax parameter path (unscanned layout), dot-joined
    hf_shape: tuple
    to_seedjax: Callable          # np array in checkpoint layout -> seedjax layout
    to_hf: Callable               # inverse


def tensor_specs(cfg: LMConfig) -> list[TensorSpec]:
    """The explicit per-tensor mapping of an Ouro checkpoint for ``cfg``."""
    D, F, V = cfg.d_model, cfg.mlp_dim, cfg.vocab_size
    H, K, hd = cfg.n_heads, cfg.kv_heads, cfg.resolved_head_dim
    ident = lambda w: w
    T = lambda w: w.T

    def qkv(n):   # [n*hd, D] <-> [D, n, hd]
        return (lambda w: w.T.reshape(D, n, hd)), (lambda w: w.reshape(D, n * hd).T)

    specs = [TensorSpec("model.embed_tokens.weight", "embed.table", (V, D), ident, ident)]
    for l in range(cfg.n_layers):
        p, b = f"model.layers.{l}.", f"layers.body.blocks.{l}."
        for proj, ours, n in (("q", "wq", H), ("k", "wk", K), ("v", "wv", K)):
            specs.append(TensorSpec(f"{p}self_attn.{proj}_proj.weight", f"{b}attn.{ours}",
                                    (n * hd, D), *qkv(n)))
        specs.append(TensorSpec(f"{p}self_attn.o_proj.weight", f"{b}attn.wo", (D, H * hd),
                                lambda w: w.T.reshape(H, hd, D),
                                lambda w: w.reshape(H * hd, D).T))
        specs += [
            TensorSpec(f"{p}mlp.gate_proj.weight", f"{b}ffn.w_gate", (F, D), T, T),
            TensorSpec(f"{p}mlp.up_proj.weight", f"{b}ffn.w_up", (F, D), T, T),
            TensorSpec(f"{p}mlp.down_proj.weight", f"{b}ffn.w_down", (D, F), T, T),
            # the norm-name trap: post_attention_layernorm is the PRE-MLP norm
            TensorSpec(f"{p}input_layernorm.weight", f"{b}attn_norm.scale", (D,), ident, ident),
            TensorSpec(f"{p}input_layernorm_2.weight", f"{b}attn_post_norm.scale", (D,),
                       ident, ident),
            TensorSpec(f"{p}post_attention_layernorm.weight", f"{b}ffn_norm.scale", (D,),
                       ident, ident),
            TensorSpec(f"{p}post_attention_layernorm_2.weight", f"{b}ffn_post_norm.scale", (D,),
                       ident, ident),
        ]
    specs += [
        TensorSpec("model.norm.weight", "final_norm.scale", (D,), ident, ident),
        TensorSpec("model.early_exit_gate.weight", "layers.exit_gate.kernel", (1, D),
                   lambda w: w.reshape(D), lambda w: w.reshape(1, D)),
        TensorSpec("model.early_exit_gate.bias", "layers.exit_gate.bias", (1,),
                   lambda w: w.reshape(()), lambda w: w.reshape(1)),
    ]
    if cfg.head == "untied":
        specs.append(TensorSpec("lm_head.weight", "head.proj.kernel", (V, D), T, T))
    return specs


_BLOCKS, _STACKED = "layers.body.blocks.", "layers.body.stacked."


def _to_model_key(key: str, scan: bool) -> tuple[str, int | None]:
    """Unscanned key -> (model key, layer index into the stacked axis or None)."""
    if scan and key.startswith(_BLOCKS):
        layer, rest = key[len(_BLOCKS):].split(".", 1)
        return _STACKED + rest, int(layer)
    return key, None


def _flat_params(model: nnx.Module) -> dict[str, Any]:
    return {".".join(map(str, path)): v
            for path, v in nnx.state(model, nnx.Param).flat_state()}


# ----------------------------------------------------------------------------- reading

def _tensor_files(path: str) -> dict[str, str]:
    """Checkpoint tensor name -> safetensors file, from model.safetensors or the index."""
    single, index = os.path.join(path, WEIGHTS_NAME), os.path.join(path, INDEX_NAME)
    if os.path.exists(single):
        with safe_open(single, framework="np") as f:
            return {k: single for k in f.keys()}
    if not os.path.exists(index):
        raise ValueError(f"{path!r} has neither {WEIGHTS_NAME} nor {INDEX_NAME}")
    with open(index) as fh:
        weight_map = json.load(fh).get("weight_map")
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index} has no 'weight_map' object")
    files: dict[str, str] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(path, shard)
        if not os.path.exists(shard_path):
            raise ValueError(f"{INDEX_NAME} lists shard {shard!r}, which is missing from {path!r}")
        with safe_open(shard_path, framework="np") as f:
            for k in f.keys():
                if weight_map.get(k) != shard:
                    raise ValueError(f"tensor {k!r} is in shard {shard!r} but {INDEX_NAME} maps it "
                                     f"to {weight_map.get(k)!r}")
                files[k] = shard_path
    for k, shard in weight_map.items():
        if k not in files:
            raise ValueError(f"tensor {k!r}: listed in {INDEX_NAME} (shard {shard!r}) but not "
                             "stored there")
    return files


def load_hf(path: str, dtype: Any = jnp.float32, *, param_dtype: Any = None,
            scan_layers: bool = False, remat: bool = False,
            max_seq_len: int | None = None) -> LM:
    """Builds a seedjax ``LM`` (looped stack) from an Ouro checkpoint directory.

    dtype: the compute dtype (float32, bfloat16 or float16). param_dtype: how parameters are
    stored (default: ``dtype``; e.g. float32 params with bfloat16 compute for training).
    scan_layers / remat: seedjax execution options (the weights are the same). max_seq_len:
    overrides config.json's max_position_embeddings (the KV-cache default length).
    """
    with open(os.path.join(path, CONFIG_NAME)) as fh:
        hf = json.load(fh)
    cfg = config_from_hf(hf, dtype=dtype, scan_layers=scan_layers, remat=remat,
                         max_seq_len=max_seq_len)
    pdt = _NP_DTYPES[_dtype_name(dtype if param_dtype is None else param_dtype, "param_dtype")]
    specs = tensor_specs(cfg)
    files = _tensor_files(path)
    expected = {s.hf_name for s in specs}
    unexpected = sorted(set(files) - expected)
    if unexpected:
        with safe_open(files[unexpected[0]], framework="np") as f:
            shape = tuple(f.get_slice(unexpected[0]).get_shape())
        raise ValueError(f"unexpected checkpoint tensor {unexpected[0]!r} with shape {shape} "
                         f"(expected shape: none, no such parameter); all unexpected: "
                         f"{unexpected}")
    for s in specs:
        if s.hf_name not in files:
            raise ValueError(f"missing checkpoint tensor {s.hf_name!r}: expected shape "
                             f"{s.hf_shape}, checkpoint shape: absent")

    abstract = nnx.eval_shape(lambda: LM(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    slots = _flat_params(abstract)
    values: dict[str, Any] = {}
    layered: dict[str, dict[int, np.ndarray]] = {}
    handles: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for s in specs:
            fname = files[s.hf_name]
            if fname not in handles:
                handles[fname] = stack.enter_context(safe_open(fname, framework="np"))
            f = handles[fname]
            shape = tuple(f.get_slice(s.hf_name).get_shape())
            if shape != s.hf_shape:
                raise ValueError(f"checkpoint tensor {s.hf_name!r} has shape {shape}, expected "
                                 f"{s.hf_shape} (from config.json)")
            arr = np.array(s.to_seedjax(f.get_tensor(s.hf_name)), dtype=pdt, order="C")
            key, layer = _to_model_key(s.key, cfg.scan_layers)
            if layer is None:
                values[key] = arr
            else:
                layered.setdefault(key, {})[layer] = arr
    for key, per_layer in layered.items():
        values[key] = np.stack([per_layer[l] for l in range(cfg.n_layers)])
    missing = sorted(set(slots) - set(values))
    extra = sorted(set(values) - set(slots))
    if missing or extra:  # the mapping and the model disagree: a bug, not a user error
        raise RuntimeError(f"Ouro mapping out of sync with the model: parameters without a "
                           f"tensor {missing}, tensors without a parameter {extra}")
    for key, var in slots.items():
        if tuple(var.shape) != values[key].shape:
            raise RuntimeError(f"Ouro mapping gives {key} shape {values[key].shape}, model has "
                               f"{tuple(var.shape)}")
    flat = [(tuple(int(p) if p.isdigit() else p for p in k.split(".")), v)
            for k, v in values.items()]
    params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    for path, v in flat:
        node = params
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = jnp.asarray(v)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


# ----------------------------------------------------------------------------- writing

def save_hf(model: LM, path: str, *, dtype: Any = None,
            max_shard_bytes: int | None = None) -> None:
    """Writes ``model`` as an Ouro checkpoint: ``config.json`` and ``model.safetensors`` (or,
    with ``max_shard_bytes``, ``model-0000i-of-0000n.safetensors`` shards plus
    ``model.safetensors.index.json``). dtype: the stored dtype (default: the parameters' own,
    which must then be one dtype)."""
    cfg = model.cfg
    _check_ouro_layout(cfg)
    flat = {k: np.asarray(v[...]) for k, v in _flat_params(model).items()}
    if dtype is None:
        names = {a.dtype.name for a in flat.values()}
        if len(names) != 1:
            raise ValueError(f"parameters have several dtypes {sorted(names)}; pass dtype=")
        dtype = names.pop()
    name = _dtype_name(dtype, "dtype")
    npdt = _NP_DTYPES[name]
    tensors: dict[str, np.ndarray] = {}
    used = set()
    for s in tensor_specs(cfg):
        key, layer = _to_model_key(s.key, cfg.scan_layers)
        if key not in flat:
            raise ValueError(f"model has no parameter {key} for checkpoint tensor {s.hf_name!r}")
        used.add(key)
        arr = flat[key] if layer is None else flat[key][layer]
        out = np.array(s.to_hf(arr), dtype=npdt, order="C")
        if out.shape != s.hf_shape:
            raise ValueError(f"parameter {key} gives checkpoint tensor {s.hf_name!r} of shape "
                             f"{out.shape}, expected {s.hf_shape}")
        tensors[s.hf_name] = out
    left = sorted(set(flat) - used)
    if left:
        raise ValueError(f"parameters {left} have no Ouro checkpoint tensor")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_NAME), "w") as fh:
        json.dump(hf_config(cfg, dtype=name), fh, indent=2, sort_keys=True)
        fh.write("\n")
    meta = {"format": "pt"}
    if max_shard_bytes is None:
        save_file(tensors, os.path.join(path, WEIGHTS_NAME), metadata=meta)
        return
    if max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes={max_shard_bytes} must be >= 1")
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for k in sorted(tensors):
        if shards[-1] and size + tensors[k].nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = tensors[k]
        size += tensors[k].nbytes
    n = len(shards)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file(shard, os.path.join(path, fname), metadata=meta)
        weight_map.update({k: fname for k in shard})
    index = {"metadata": {"total_size": int(sum(t.nbytes for t in tensors.values()))},
             "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(path, INDEX_NAME), "w") as fh:
        json.dump(index, fh, indent=2)
        fh.write("\n")
