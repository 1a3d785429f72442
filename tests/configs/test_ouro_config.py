"""configs/papers/ouro.py: the Ouro-1.4B / 2.6B model configs have exactly the released
checkpoints' parameter counts (abstract init: shapes only, no memory), and the small variants
build a looped LM that runs."""
import math

import jax.numpy as jnp
import pytest
from flax import nnx

from configs.papers import ouro
from seedjax.models import LM, LMConfig


def n_params(model_cfg) -> int:
    abstract = nnx.eval_shape(lambda: LM(LMConfig.from_dict(model_cfg), rngs=nnx.Rngs(0)))
    return sum(math.prod(v.shape) for _, v in nnx.state(abstract, nnx.Param).flat_state())


@pytest.mark.parametrize("size,count", [("1.4b", 1_434_652_673), ("2.6b", 2_667_974_657)])
def test_paper_configs_match_released_parameter_counts(size, count):
    """Abstract parameter count of the config == the released checkpoint's, exactly."""
    cfg = ouro.get_config(size)
    assert ouro.PAPER_PARAMS[size] == count
    assert n_params(cfg.model) == count
    m = LMConfig.from_dict(cfg.model)
    assert m.stack == "looped" and m.stack_kwargs["loops"] == 4 and m.head == "untied"


def test_smoke_variant_runs_and_bad_variant_names_allowed():
    """The smoke variant is a 4-loop looped LM giving per-loop logits; unknown variants raise a
    ValueError listing the allowed ones."""
    cfg = LMConfig.from_dict(ouro.get_config("smoke").model)
    model = LM(cfg, rngs=nnx.Rngs(0))
    out = model(jnp.zeros((1, 8), jnp.int32), return_loop_logits=True)
    assert out.loop_logits.shape == (4, 1, 8, cfg.vocab_size)
    with pytest.raises(ValueError, match="allowed"):
        ouro.get_config("7b")
