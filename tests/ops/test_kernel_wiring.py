"""seedjax.ops routes implementation="interpret" / "auto" to kernels_pallas and gets the XLA
reference's results (the memory modules switch kernels with one config field); a PKM and an
UltraMemV2 layer built with implementation="interpret" equal their "xla" twins."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.nn.memory import PKMConfig, ProductKeyMemory, UltraMemV2, UltraMemV2Config
from seedjax.ops import IMPLEMENTATIONS, embedding_bag, product_key_topk, row_dot


def test_ops_accept_the_kernel_implementations():
    assert IMPLEMENTATIONS == ("xla", "auto", "pallas_tpu", "pallas_gpu", "interpret")
    r = np.random.default_rng(0)
    q1, q2 = (jnp.asarray(r.normal(size=(8, 2, 8)), jnp.float32) for _ in range(2))
    k1, k2 = (jnp.asarray(r.normal(size=(2, 16, 8)), jnp.float32) for _ in range(2))
    for impl in ("auto", "interpret"):
        s, i = product_key_topk(q1, q2, k1, k2, topk_side=4, topk=4, implementation=impl)
        s0, i0 = product_key_topk(q1, q2, k1, k2, topk_side=4, topk=4)
        np.testing.assert_array_equal(i, i0)
        np.testing.assert_allclose(s, s0, rtol=1e-5, atol=1e-5)
    values = jnp.asarray(r.normal(size=(32, 8)), jnp.float32)
    idx = jnp.asarray(r.integers(0, 32, size=(8, 6)), jnp.int32)
    w = jnp.asarray(r.normal(size=(8, 6, 2)), jnp.float32)
    np.testing.assert_allclose(embedding_bag(values, idx, w, implementation="interpret"),
                               embedding_bag(values, idx, w), rtol=1e-5, atol=1e-5)
    x = jnp.asarray(r.normal(size=(8, 8)), jnp.float32)
    np.testing.assert_allclose(row_dot(values, idx, x, implementation="interpret"),
                               row_dot(values, idx, x), rtol=1e-5, atol=1e-5)


def test_memory_layers_with_interpret_kernels_equal_xla():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 16)), jnp.float32)
    pkm = PKMConfig(d_model=16, n_keys=8, heads=2, k_dim=8, topk=4)
    a = ProductKeyMemory(pkm, rngs=nnx.Rngs(0))
    b = ProductKeyMemory(dataclasses.replace(pkm, implementation="interpret"), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(b(x), a(x), rtol=1e-5, atol=1e-6)
    v2 = UltraMemV2Config(d_model=16, n_keys=6, k_dim=8, v_dim=8, p_dim=4, topk=4, ffn_dim=32,
                          init="official")
    a = UltraMemV2(v2, rngs=nnx.Rngs(0))
    b = UltraMemV2(dataclasses.replace(v2, implementation="interpret"), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(b(x), a(x), rtol=1e-4, atol=1e-6)
    g = jax.grad(lambda m: jnp.sum(m(x) ** 2))
    ga, gb = nnx.state(g(a)), nnx.state(g(b))
    np.testing.assert_allclose(gb["values"][...], ga["values"][...], rtol=1e-4, atol=1e-6)
