"""Clear ValueErrors: a mesh shape that does not fit the devices, and (strict sharding) a
parameter dimension its mesh axes do not divide; the lenient default replicates that dimension."""
import jax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec

from seedjax.models import LM, LMConfig
from seedjax.sharding import MESH_AXES, get_rules, make_mesh, param_shardings, spec_for
from seedjax.sharding.mesh import resolve_mesh_shape
from seedjax.train.config_check import ConfigError, set_from_text, validate_config
from seedjax.train.loop import Trainer
from tests.conftest import smoke_config

CFG = LMConfig(d_model=64, n_layers=1, n_heads=4, n_kv_heads=4, mlp_dim=96, max_seq_len=32)


def _mesh(**sizes):
    return AbstractMesh(tuple(sizes.get(a, 1) for a in MESH_AXES), MESH_AXES)


@pytest.mark.parametrize("shape,match", [
    ({"data": 3}, r"mesh.shape \{data: 3\} has 3 devices but 8 devices are available"),
    ({"data": 3, "model": -1}, r"fixed axes' product 3 does not divide the 8 devices"),
    ({"data": 2, "model": 2}, r"has 4 devices but 8"),
    ({"data": -1, "model": -1}, "at most one mesh axis may be -1"),
    ({"data": 0}, "mesh.data must be >= 1"),
])
def test_mesh_shape_not_fitting_the_devices_raises(shape, match):
    with pytest.raises(ValueError, match=match):
        resolve_mesh_shape(shape, 8)
    with pytest.raises(ValueError, match=match):
        make_mesh(shape, devices=jax.devices()[:8])


def test_spec_for_strict_names_parameter_dimension_and_axis():
    rules = get_rules("fsdp_tp")
    mesh = _mesh(fsdp=2, model=4)
    # mlp_dim 96 % model 4 == 0; heads 6 % 4 != 0
    assert spec_for((64, 96), ("embed", "mlp"), rules, mesh, strict=True) == \
        PartitionSpec("fsdp", "model")
    assert spec_for((64, 6, 16), ("embed", "heads", "head_dim"), rules, mesh) == \
        PartitionSpec("fsdp", None, None)
    with pytest.raises(ValueError, match=r"^parameter a/wq: dimension 1 \('heads'\) of size 6 is "
                       r"not divisible by mesh axis model of size 4"):
        spec_for((64, 6, 16), ("embed", "heads", "head_dim"), rules, mesh, strict=True,
                 name="parameter a/wq")
    with pytest.raises(ValueError,
                       match=r"'batch'\) of size 6 .* mesh axes data\*fsdp of size 4"):
        spec_for((6, 3), ("batch", None), rules, _mesh(data=2, fsdp=2), strict=True)


def test_param_shardings_strict_names_the_parameter():
    abstract = nnx.eval_shape(lambda: LM(CFG, rngs=nnx.Rngs(0)))
    mesh = _mesh(model=8)     # heads 4 and mlp 96 do not split 8 ways; vocab 256 does
    lenient = param_shardings(abstract, mesh, get_rules("fsdp_tp"))
    assert lenient["layers"]["blocks"][0]["attn"]["wq"].spec == PartitionSpec(None, None, None)
    assert lenient["embed"]["table"].spec == PartitionSpec("model", None)
    with pytest.raises(ValueError, match=r"parameter layers/blocks/0/attn/w[kqov]: dimension \d "
                       r"\('(kv_)?heads'\) of size 4 .* mesh axis model of size 8"):
        param_shardings(abstract, mesh, get_rules("fsdp_tp"), strict=True)


def test_config_field_validated_and_default_off():
    cfg = smoke_config("stdlib")
    assert cfg.mesh.strict_sharding is False
    set_from_text(cfg, "mesh.strict_sharding", "true")
    assert cfg.mesh.strict_sharding is True
    validate_config(cfg)
    with pytest.raises(ConfigError, match="mesh.strict_sharding"):
        set_from_text(cfg, "mesh.strict_sharding", "maybe")
    with cfg.mesh.ignore_type():
        cfg.mesh.strict_sharding = "yes"
    with pytest.raises(ConfigError, match="mesh.strict_sharding='yes' must be of type bool"):
        validate_config(cfg)


def test_trainer_strict_sharding_raises_lenient_runs(tmp_path, small_corpus):
    """The trainer places parameters leniently by default; with mesh.strict_sharding the
    smoke LM's 4 heads on a model=8 mesh are a ValueError naming the parameter."""
    cfg = smoke_config(small_corpus)
    cfg.mesh.shape = dict(data=1, fsdp=1, model=8, expert=1, mem=1)
    trainer = Trainer(cfg, str(tmp_path / "lenient"), progress=False)
    assert trainer.p_shardings["layers"]["blocks"][0]["attn"]["wq"].spec[1] is None
    cfg.mesh.strict_sharding = True
    with pytest.raises(ValueError, match=r"parameter layers/blocks/0/attn/w\w: dimension 1 "
                       r"\('(kv_)?heads'\) of size 4 .* mesh axis model of size 8"):
        Trainer(cfg, str(tmp_path / "strict"), progress=False)


# paper-scale configs with row-sharded tables or experts (others: dense layers only)
PAPER_TABLES = [("over_tokenized", "paper_olmoe1.3b_oe12.8m"), ("ultramem_v2", "paper_1b_v2"),
                ("ultramem", "paper_1.6b_ultramem"), ("hyper_connections", "paper_olmoe1b7b_dhc4"),
                ("race_dit", "paper_b2_moe"), ("ouro", "1.4b")]


@pytest.mark.parametrize("paper,variant", PAPER_TABLES)
def test_paper_scale_tables_and_experts_split_8_ways(paper, variant):
    """Paper-scale configs set mesh.strict_sharding, and their memory / n-gram tables' rows, MoE
    experts and embed dims divide an 8-way mem, expert and fsdp axis (fsdp_tp_mem, strict)."""
    import importlib

    from tests.sharding.test_golden_shardings import build_abstract
    cfg = importlib.import_module(f"configs.papers.{paper}").get_config(variant)
    assert cfg.mesh.strict_sharding is True
    validate_config(cfg)
    sh = param_shardings(build_abstract(cfg), _mesh(fsdp=8, expert=8, mem=8),
                         get_rules("fsdp_tp_mem"), strict=True)
    specs = {str(s.spec) for s in jax.tree.leaves(sh)}
    want = {"ouro": "fsdp", "race_dit": "expert", "hyper_connections": "expert"}.get(paper, "mem")
    assert any(want in s for s in specs), (want, specs)
