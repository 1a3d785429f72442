"""Functional model handle and train state.

``ModelDef`` holds the NNX graph definition plus an abstract parameter template, so a pure
parameter dict can be turned back into a module *inside* ``jax.jit`` (merge happens at trace
time only; no per-step Python graph traversal).

The train state is a plain dict pytree (what orbax saves):
``{"step": int32[], "params": pure dict, "opt_state": optax state, "rng": uint32 key data}``,
plus ``"model_state"`` (pure dict of the model's ``nnx.BatchStat`` variables, e.g. the Expert
Race threshold ``RouterStat``) when the model has any, and ``"ema"`` (an exponential moving
average of the params, ``train.ema_decay`` > 0). Model state is not differentiated: a train
step runs the model in training mode, reads the updated statistics back and stores them; eval
merges them with the model in eval mode (``use_running_average=True``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seedjax.nn.params import param_metadata
from seedjax.sharding.rules import param_shardings


MODEL_STATE = nnx.BatchStat   # variables a train step updates without gradients


@dataclasses.dataclass(frozen=True, eq=False)
class ModelDef:
    graphdef: Any
    template: Any        # abstract nnx.State of the Params (ShapeDtypeStructs inside Variables)
    rest: Any            # other non-Param state (e.g. RNG counters), kept constant
    state_template: Any = None  # abstract nnx.State of the MODEL_STATE variables (may be empty)

    @property
    def has_model_state(self) -> bool:
        return bool(self.state_template is not None and jax.tree.leaves(self.state_template))

    def merge(self, params: dict, model_state: dict | None = None, *,
              train: bool = True) -> nnx.Module:
        """The module with ``params`` (and ``model_state``, else the abstract template's
        statistics must not be read); ``train=False`` puts it in eval mode."""
        state = jax.tree.map(lambda x: x, self.template)  # fresh Variables
        nnx.replace_by_pure_dict(state, params)
        parts = [state]
        if self.state_template is not None:
            mstate = jax.tree.map(lambda x: x, self.state_template)
            if model_state is not None:
                nnx.replace_by_pure_dict(mstate, model_state)
            parts.append(mstate)
        module = nnx.merge(self.graphdef, *parts, self.rest)
        if not train:
            module.eval()
        return module

    @staticmethod
    def model_state_of(module: nnx.Module) -> dict:
        """The pure dict of ``module``'s MODEL_STATE variables (what the train state holds)."""
        return nnx.to_pure_dict(nnx.state(module, MODEL_STATE))


def abstract_model(model_fn: Callable[[], nnx.Module]) -> nnx.Module:
    """The module built by ``model_fn`` with ShapeDtypeStructs instead of arrays."""
    return nnx.eval_shape(model_fn)


def model_def(abstract: nnx.Module) -> ModelDef:
    graphdef, params, mstate, rest = nnx.split(abstract, nnx.Param, MODEL_STATE, ...)
    return ModelDef(graphdef, params, rest, mstate)


def param_labels(abstract: nnx.Module) -> tuple[dict, dict]:
    """(weight-decay mask, lr-group names) as pure dicts matching the params."""
    return (param_metadata(abstract, "weight_decay", True),
            param_metadata(abstract, "lr_group", "default"))


def param_shapes(abstract: nnx.Module) -> dict:
    """{'/'.join(path): shape} of every parameter (recorded in checkpoints)."""
    flat = nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    return {"/".join(map(str, p)): list(v.get_value().shape) for p, v in flat}


def fresh_state(model: nnx.Module, mdef: ModelDef, tx, seed: int, ema: bool) -> dict:
    """The train state of a freshly built ``model`` (the layout of the module docstring):
    step 0, its params, ``tx``'s initial optimizer state, the rng of ``seed``, its model state
    when it has any and a params EMA when ``ema``."""
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(seed))}
    if mdef.has_model_state:
        state["model_state"] = mdef.model_state_of(model)
    if ema:
        state["ema"] = jax.tree.map(jnp.copy, params)
    return state


def init_params(model_fn: Callable[[], nnx.Module], shardings: dict | None = None) -> dict:
    """Initialises parameters directly into their shardings (no full copy on one device)."""
    def create():
        return nnx.to_pure_dict(nnx.state(model_fn(), nnx.Param))
    return jax.jit(create, out_shardings=shardings)()


def count_params(params: dict) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


def state_shardings(abstract_state: dict, mesh: Mesh, p_shardings: dict) -> dict:
    """Shardings of the whole train state: params by rules, optimizer moments like their params
    (matched by shape along the tree), scalars replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    flat_p = {jax.tree_util.keystr(k): s for k, s in jax.tree_util.tree_flatten_with_path(p_shardings)[0]}
    flat_p = dict(sorted(flat_p.items(), key=lambda kv: -len(kv[0])))  # longest suffix wins
    shapes_p = {jax.tree_util.keystr(k): x.shape for k, x in
                jax.tree_util.tree_flatten_with_path(abstract_state["params"])[0]}

    def for_leaf(path, x):
        key = jax.tree_util.keystr(path)
        for pk, s in flat_p.items():  # optimizer moments end with the param's own path
            if key.endswith(pk) and shapes_p[pk] == x.shape:
                return s
        return replicated

    return jax.tree_util.tree_map_with_path(for_leaf, abstract_state)
