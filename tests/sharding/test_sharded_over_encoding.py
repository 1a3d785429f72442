"""Over-encoding's flat n-gram table row-sharded over "mem" on 8 fake CPU devices: embeddings and
gradients equal the unsharded module, and an LM trains identically with the table and its Adam
moments sharded (preset fsdp_tp_mem)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.models import LM, LMConfig
from seedjax.nn.over_encoding import OverEncodingConfig, OverEncodingEmbed
from seedjax.sharding import make_mesh
from seedjax.train.state import init_params
from tests.sharding.test_sharded_memory import _table_leaves, _train

OE_KW = dict(m=1009, n=3, k=2, row_multiple=64)


@pytest.mark.parametrize("scheme,mesh_shape", [("psum", {"mem": 4, "data": 2}),
                                               ("all_to_all", {"mem": 8})])
def test_sharded_embedding_equals_unsharded(scheme, mesh_shape):
    """Property: with the table read through ``sharded_embedding_bag`` (values and gradients
    w.r.t. the table and the projections) the module equals its plain-gather self, to 1e-5."""
    plain = OverEncodingEmbed(OverEncodingConfig(256, 32, **OE_KW), rngs=nnx.Rngs(0))
    sharded = OverEncodingEmbed(OverEncodingConfig(256, 32, table_sharding=scheme, **OE_KW),
                                rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (4, 11), 0, 256).at[:, 5].set(0)
    weights = jax.random.normal(jax.random.key(2), (4, 11, 32))

    def loss(module):
        return jnp.sum(module(tokens) * weights)

    want, g_want = nnx.value_and_grad(loss)(plain)
    mesh = make_mesh(mesh_shape, devices=jax.devices()[:8])
    with jax.set_mesh(mesh):
        got, g_got = nnx.value_and_grad(loss)(sharded)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for name in ("ngram_table", "proj"):
        np.testing.assert_allclose(getattr(g_got, name)[...], getattr(g_want, name)[...],
                                   rtol=1e-5, atol=1e-6)


def _lm_cfg(**kw):
    return LMConfig(d_model=32, n_layers=2, n_heads=2, mlp_dim=64, max_seq_len=16,
                    embed="over_encoding", embed_kwargs={**OE_KW, **kw})


def test_lm_trains_same_with_sharded_table():
    """Property: 5 AdamW steps of a 2-layer OE LM with its n-gram table row-sharded over "mem"
    (4 x data 2, psum scheme) have the unsharded losses (rtol 1e-5), and the table and its Adam
    moments (mu, nu) hold one row block per device on "mem"."""
    params = jax.device_get(init_params(lambda: LM(_lm_cfg(), rngs=nnx.Rngs(0))))
    ref, _ = _train({"data": 1}, "dp", _lm_cfg(), params)
    mesh_shape = {"mem": 4, "data": 2}
    got, state = _train(mesh_shape, "fsdp_tp_mem", _lm_cfg(table_sharding="psum"), params)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert ref[-1] < ref[0]
    leaves = _table_leaves(state, "['embed']['ngram_table']")
    assert len(leaves) == 3, [p for p, _ in leaves]       # param, mu, nu
    for path, arr in leaves:
        assert arr.sharding.spec[0] == "mem", (path, arr.sharding.spec)
        assert arr.addressable_shards[0].data.shape[0] == arr.shape[0] // 4
