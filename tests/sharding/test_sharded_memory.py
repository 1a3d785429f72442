"""Row-sharded memory tables (``seedjax.ops.sharded_lookup``) on 8 fake CPU devices: both
schemes equal the unsharded ops (values and gradients), all_to_all capacity drops are counted
exactly, memory modules and a 2-layer UltraMemV2 LM train identically sharded and unsharded
with the tables (and their Adam moments) split over "mem", and the TPU AOT compile script runs
at a tiny shape when libtpu is installed."""
import functools
import importlib.util
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from seedjax.models import LM, LMConfig
from seedjax.nn.memory import (PKMConfig, ProductKeyMemory, UltraMem, UltraMemConfig,
                               UltraMemV2Config)
from seedjax.nn.partitioning import activation_rules
from seedjax.ops import product_key_topk, tucker_topk
from seedjax.ops.embedding_bag import embedding_bag, row_dot
from seedjax.ops.sharded_lookup import sharded_embedding_bag, sharded_row_dot
from seedjax.sharding import get_rules, make_mesh, param_shardings
from seedjax.train.optim import make_optimizer
from seedjax.train.state import (abstract_model, init_params, model_def, param_labels,
                                 state_shardings)
from seedjax.train.step import make_train_step

ROOT = pathlib.Path(__file__).resolve().parents[2]
MESHES = [{"mem": 4, "data": 2}, {"mem": 8}]


def _inputs(n_rows=64, dv=8, k=6, lead=(3, 7), slices=2, groups=3, seed=0):
    """Random bag inputs with pad ids (-2, -1, N, N+1) and duplicated ids within a bag."""
    ks = jax.random.split(jax.random.key(seed), 6)
    values = jax.random.normal(ks[0], (n_rows, dv))
    idx = jax.random.randint(ks[1], (*lead, k), -2, n_rows + 2)
    idx = idx.at[..., 1].set(idx[..., 0])
    idx = idx.at[(0,) * len(lead)].set(jnp.array([-1, n_rows, 5, 5, 5, n_rows + 1][:k]))
    weights = jax.random.normal(ks[2], (*lead, k, slices))
    grp = jax.random.randint(ks[3], (*lead, k), 0, groups)
    x = jax.random.normal(ks[4], (*lead, dv))
    return values, idx, weights, grp, x


@pytest.mark.parametrize("mesh_shape,scheme,impl", [
    *[(m, s, "auto") for m in MESHES for s in ("psum", "all_to_all")],
    (MESHES[0], "psum", "interpret")])
def test_schemes_equal_unsharded_values_and_grads(mesh_shape, scheme, impl):
    """Property: for a table row-sharded over "mem", both schemes give embedding_bag's output
    (sliced weights + groups, and plain [..., K] weights) and row_dot's output, and the same
    gradients w.r.t. the table, the weights and x, to 1e-5 (f32); the table gradient stays
    sharded over "mem". 21 tokens also exercise the token padding (not a multiple of 8).
    impl="interpret": the psum scheme runs the Pallas kernels on each shard's rows."""
    values, idx, w, grp, x = _inputs()
    w1 = w[..., 0]

    def loss(bag, dot, v, w, w1, x):
        a = bag(v, idx, w, groups=grp, n_groups=3)
        b = bag(v, idx, w1)
        c = dot(v, idx, x)
        return jnp.sum(a * jnp.cos(a)) + jnp.sum(b ** 2) + jnp.sum(jnp.sin(c)), (a, b, c)

    ref = jax.value_and_grad(lambda *a: loss(embedding_bag, row_dot, *a), argnums=(0, 1, 2, 3),
                             has_aux=True)(values, w, w1, x)
    mesh = make_mesh(mesh_shape)
    bag = lambda *a, **k: sharded_embedding_bag(*a, scheme=scheme, axis="mem",
                                                implementation=impl, **k)
    dot = lambda *a: sharded_row_dot(*a, scheme=scheme, axis="mem", implementation=impl)
    with jax.set_mesh(mesh):
        v_sh = jax.device_put(values, NamedSharding(mesh, P("mem", None)))
        got = jax.jit(jax.value_and_grad(lambda *a: loss(bag, dot, *a), argnums=(0, 1, 2, 3),
                                         has_aux=True))(v_sh, w, w1, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    g_values = got[1][0]
    assert g_values.sharding.spec[0] == "mem", g_values.sharding


def test_explicit_mesh_inputs_are_resharded():
    """Property: on a mesh with Explicit axes (where shard_map refuses mismatched inputs), both
    schemes accept a table sharded P("mem") and data-sharded ids, pad 6 tokens to the 8 token
    shards, and still equal embedding_bag (outputs and gradients, 1e-5)."""
    values, idx, _, _, _ = _inputs(n_rows=32, lead=(6,))
    w = jax.random.normal(jax.random.key(5), idx.shape)
    ref = jax.value_and_grad(lambda v, w: jnp.sum(embedding_bag(v, idx, w) ** 2),
                             argnums=(0, 1))(values, w)
    mesh = make_mesh({"mem": 4, "data": 2}, axis_type=AxisType.Explicit)
    for scheme in ("psum", "all_to_all"):
        with jax.set_mesh(mesh):
            v = jax.device_put(values, NamedSharding(mesh, P("mem", None)))
            ids = jax.device_put(idx, NamedSharding(mesh, P("data", None)))
            got = jax.jit(jax.value_and_grad(lambda v, w: jnp.sum(
                sharded_embedding_bag(v, ids, w, scheme=scheme) ** 2), argnums=(0, 1)))(v, w)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
        assert got[1][0].sharding.spec[0] == "mem"


def test_kernels_run_per_token_shard_under_a_mesh():
    """Property: under a data=4 x mem=2 mesh, the seedjax.ops entries with a Pallas kernel
    (interpret mode) wrap it in shard_map over the token axes (the jaxpr has a shard_map; XLA
    cannot partition the custom call) and equal the unsharded XLA reference: embedding_bag
    (groups, 21 tokens padded to 24), row_dot, product_key_topk and tucker_topk, outputs and
    gradients (1e-5 relative)."""
    values, idx, w, grp, x = _inputs()
    ks = jax.random.split(jax.random.key(3), 6)
    q1, q2 = (jax.random.normal(k, (3, 7, 2, 4)) for k in ks[:2])
    k1, k2 = (jax.random.normal(k, (2, 6, 4)) for k in ks[2:4])
    qr = jax.random.normal(ks[4], (21, 2, 2, 4))
    kr = jax.random.normal(ks[5], (2, 6, 2, 4))
    cores = jax.random.normal(ks[0], (2, 2, 2, 2))

    def loss(impl, v, w, x, q1, k1, qr, kr):
        a = embedding_bag(v, idx, w, groups=grp, n_groups=3, implementation=impl)
        b = row_dot(v, idx, x, implementation=impl)
        s, i = product_key_topk(q1, q2, k1, k2, topk_side=3, topk=4, implementation=impl)
        t, j = tucker_topk(qr, qr[::-1], kr, kr[:, ::-1], cores, topk_side=3, topk=4,
                           implementation=impl)
        total = jnp.sum(a * jnp.cos(a)) + jnp.sum(jnp.sin(b)) + jnp.sum(s ** 2) + jnp.sum(t ** 2)
        return total, (i, j)

    args = (values, w, x, q1, k1, qr, kr)
    grad = lambda impl: jax.value_and_grad(functools.partial(loss, impl),
                                           argnums=tuple(range(7)), has_aux=True)
    ref = jax.jit(grad("xla"))(*args)
    with jax.set_mesh(make_mesh({"data": 4, "mem": 2})):
        assert "shard_map" in str(jax.make_jaxpr(grad("interpret"))(*args))
        got = jax.jit(grad("interpret"))(*args)
    (lv, (i, j)), g = got
    (rv, (ri, rj)), rg = ref
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(j, rj)
    for a, b in zip(jax.tree.leaves((lv, g)), jax.tree.leaves((rv, rg))):
        scale = max(1.0, float(jnp.max(jnp.abs(b))))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * scale)
    assert "shard_map" not in str(jax.make_jaxpr(grad("interpret"))(*args))  # no mesh: plain


def _drop_reference(idx, n_rows, n_shards, cap):
    """numpy model of all_to_all capacity on a {"mem": S} mesh: shard j owns tokens
    [j t, (j+1) t); within a shard, requests (token-major) to one owner beyond ``cap`` drop."""
    flat = np.asarray(idx).reshape(n_shards, -1)
    out = flat.copy()
    n_local = n_rows // n_shards
    for j in range(n_shards):
        seen = np.zeros(n_shards, int)
        for r, i in enumerate(flat[j]):
            if 0 <= i < n_rows:
                o = i // n_local
                if seen[o] >= cap:
                    out[j, r] = -1
                seen[o] += 1
    return out.reshape(idx.shape)


def test_all_to_all_capacity_drops_are_exact_and_counted():
    """Property: with capacity_factor f the all_to_all scheme keeps, per shard and owner, the
    first C = ceil(f t K / S) requests (token-major), reads zero for the rest, and returns their
    total count; capacity_factor=None never drops (count 0)."""
    n_rows, k, s = 64, 6, 8
    values, _, w, _, _ = _inputs(n_rows=n_rows, k=k, lead=(8, 2))
    # skewed ids: most requests go to shard 0's rows, so a small capacity must drop some
    idx = jax.random.randint(jax.random.key(3), (8, 2, k), -1, 12)
    w1 = w[..., 0]
    mesh = make_mesh({"mem": s})
    cap = int(np.ceil(1.0 * 2 * k / s))                          # t = 2 tokens per shard
    with jax.set_mesh(mesh):
        full, n0, out, dropped = jax.jit(lambda v, i, w: (
            *sharded_embedding_bag(v, i, w, scheme="all_to_all", return_dropped=True),
            *sharded_embedding_bag(v, i, w, scheme="all_to_all", capacity_factor=1.0,
                                   return_dropped=True)))(values, idx, w1)
    kept = _drop_reference(idx, n_rows, s, cap)
    n_drop = int(np.sum((kept == -1) & (np.asarray(idx) != -1)))
    assert n_drop > 0 and int(dropped) == n_drop and int(n0) == 0
    np.testing.assert_allclose(out, embedding_bag(values, jnp.asarray(kept), w1), atol=1e-6)
    np.testing.assert_allclose(full, embedding_bag(values, idx, w1), atol=1e-6)


def test_errors_name_the_problem():
    """Property: unknown scheme, non-dividing rows, an axis missing from the mesh, no mesh,
    token_axes containing the table axis, bad shapes / capacity / implementation and bad
    config fields raise ValueError saying so."""
    values, idx, w, _, x = _inputs(n_rows=60)
    mesh = make_mesh({"mem": 8})
    with jax.set_mesh(mesh):
        with pytest.raises(ValueError, match="scheme='ring' is unknown"):
            sharded_embedding_bag(values[:56], idx, w, scheme="ring")
        with pytest.raises(ValueError, match="60 rows are not divisible by the 8 shards"):
            sharded_row_dot(values, idx, x)
        with pytest.raises(ValueError, match="'rows' is not an axis of the mesh"):
            sharded_embedding_bag(values[:56], idx, w, axis="rows")
        with pytest.raises(ValueError, match="must not contain the table axis"):
            sharded_embedding_bag(values[:56], idx, w, token_axes=("data", "mem"))
        with pytest.raises(ValueError, match="weights shape"):
            sharded_embedding_bag(values[:56], idx, w[..., :3, :])
        with pytest.raises(ValueError, match="capacity_factor"):
            sharded_embedding_bag(values[:56], idx, w, capacity_factor=0)
        with pytest.raises(ValueError, match="implementation='nope'"):
            sharded_row_dot(values[:56], idx, x, implementation="nope")
        with pytest.raises(ValueError, match="not supported by the all_to_all scheme"):
            sharded_row_dot(values[:56], idx, x, scheme="all_to_all", implementation="interpret")
    with pytest.raises(ValueError, match="no mesh"):
        sharded_embedding_bag(values[:56], idx, w)
    with pytest.raises(ValueError, match="UltraMemV2Config.table_sharding='ring'"):
        UltraMemV2Config(d_model=32, table_sharding="ring")
    with pytest.raises(ValueError, match="PKMConfig.table_axis"):
        PKMConfig(d_model=32, table_axis="")


@pytest.mark.parametrize("make,scheme", [
    (lambda ts: ProductKeyMemory(PKMConfig(d_model=16, n_keys=4, heads=2, k_dim=8, topk=3,
                                           table_sharding=ts), rngs=nnx.Rngs(0)), "all_to_all"),
    (lambda ts: UltraMem(UltraMemConfig(d_model=16, n_keys=4, heads=2, k_dim=8, topk=4,
                                        expand=4, table_sharding=ts), rngs=nnx.Rngs(0)), "psum"),
], ids=["pkm", "ultramem_ive"])
def test_memory_modules_sharded_equal_plain(make, scheme):
    """Property: PKM and UltraMem (IVE groups) with table_sharding set give the same output and
    value-table gradient as table_sharding=None, on a mem=4 x data=2 mesh (atol 1e-5)."""
    x = jax.random.normal(jax.random.key(1), (4, 5, 16))
    _, params, rest = nnx.split(make(None), nnx.Param, ...)      # one init for both runs

    def out_and_grad(gdef):
        def f(p):
            y = nnx.merge(gdef, p, rest)(x)
            return jnp.sum(jnp.tanh(y)), y
        (_, y), g = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
        return y, g["values"][...]

    gdef_sharded = nnx.graphdef(nnx.eval_shape(lambda: make(scheme)))   # outside the mesh
    y0, g0 = out_and_grad(nnx.graphdef(nnx.eval_shape(lambda: make(None))))
    with jax.set_mesh(make_mesh({"mem": 4, "data": 2})):
        y1, g1 = out_and_grad(gdef_sharded)
    np.testing.assert_allclose(y1, y0, atol=1e-5)
    np.testing.assert_allclose(g1, g0, atol=1e-5)


# ---- a 2-layer UltraMemV2 LM: sharded training == unsharded --------------------------------

V2_KW = {"n_keys": 8, "k_dim": 16, "topk": 4, "v_dim": 16, "p_dim": 8, "sharing": "ring",
         "share_group": 2}          # the LM-level shared tables (lm.memory_tables)


def _lm_cfg(**kw):
    return LMConfig(d_model=32, n_layers=2, n_heads=2, mlp_dim=64, max_seq_len=16,
                    memory="ultramem_v2", memory_layers="every", memory_kwargs={**V2_KW, **kw})


@pytest.fixture(scope="module")
def lm_init():
    """Initial parameters (host arrays; table_sharding does not change them) and the losses of
    5 unsharded steps with plain gathers (one device)."""
    params = jax.device_get(init_params(lambda: LM(_lm_cfg(), rngs=nnx.Rngs(0))))
    losses, _ = _train({"data": 1}, "dp", _lm_cfg(), params)
    return params, losses


def _train(mesh_shape, rules_name, cfg, params0, steps=5):
    abstract = abstract_model(lambda: LM(cfg, rngs=nnx.Rngs(0)))
    mdef = model_def(abstract)
    tx, sched = make_optimizer({"lr": 1e-2, "steps": 10, "weight_decay": 0.1, "grad_clip": 1.0},
                               *param_labels(abstract))
    devices = jax.devices()[: int(np.prod(list(mesh_shape.values())))]
    mesh, rules = make_mesh(mesh_shape, devices=devices), get_rules(rules_name)
    p_sh = param_shardings(abstract, mesh, rules)
    x = jax.random.randint(jax.random.key(1), (8, 17), 0, 256)
    with jax.set_mesh(mesh):
        params = jax.device_put(params0, p_sh)
        state = {"step": jnp.zeros((), jnp.int32), "params": params,
                 "opt_state": tx.init(params), "rng": jax.random.key_data(jax.random.key(0))}
        s_sh = state_shardings(jax.eval_shape(lambda: state), mesh, p_sh)
        state = jax.device_put(state, s_sh)
        b_sh = NamedSharding(mesh, P(("data", "fsdp")))
        batch = jax.device_put({"inputs": x[:, :-1], "targets": x[:, 1:]}, b_sh)
        step = jax.jit(make_train_step(mdef, tx, sched), in_shardings=(s_sh, b_sh),
                       out_shardings=(s_sh, None))
        losses = []
        with activation_rules(mesh, rules):
            for _ in range(steps):
                state, m = step(state, batch)
                losses.append(float(m["loss"]))
    return losses, state


def _table_leaves(state, suffix):
    """(path, array) of the params and optimizer-state leaves whose path ends with ``suffix``."""
    return [(jax.tree_util.keystr(p), a) for p, a in
            jax.tree_util.tree_flatten_with_path({"params": state["params"],
                                                  "opt": state["opt_state"]})[0]
            if jax.tree_util.keystr(p).endswith(suffix)]


@pytest.mark.parametrize("scheme,mesh_shape", [("psum", {"mem": 4, "data": 2}),
                                               ("all_to_all", {"mem": 8})],
                         ids=["psum-mem4xdata2", "all_to_all-mem8"])
def test_ultramem_v2_lm_trains_same_sharded(lm_init, scheme, mesh_shape):
    """Property: a 2-layer UltraMemV2 LM (shared ring tables at lm.memory_tables) trained 5
    AdamW steps with its value / pre-value tables row-sharded over "mem" (preset fsdp_tp_mem)
    and read through the sharded lookup has the same losses as the unsharded model with plain
    gathers (rtol 1e-5), and each table and its Adam moments (mu, nu) live sharded over "mem"
    (one row block per device on that axis)."""
    params0, ref = lm_init
    got, state = _train(mesh_shape, "fsdp_tp_mem", _lm_cfg(table_sharding=scheme), params0)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert ref[-1] < ref[0]
    for table in ("['memory_tables']['values']", "['memory_tables']['pre_values']"):
        leaves = _table_leaves(state, table)
        assert len(leaves) == 3, [p for p, _ in leaves]       # param, mu, nu
        for path, arr in leaves:
            assert arr.sharding.spec[0] == "mem", (path, arr.sharding.spec)
            assert arr.addressable_shards[0].data.shape[0] == arr.shape[0] // mesh_shape["mem"]


# ---- TPU AOT compile script at a tiny shape --------------------------------------------------


NO_LIBTPU = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu not installed (pip install 'jax[tpu]==0.10.2'): no TPU topology to "
           "AOT-compile for")


def _compile_check(tmp_path, schemes: str) -> str:
    """Runs experiments/compile_check.py --tiny on v5e in a subprocess (libtpu needs
    JAX_PLATFORMS unset; ALLOW_MULTIPLE_LIBTPU_LOAD lets it run beside other JAX processes)
    and returns the markdown it wrote."""
    out = tmp_path / "compile.md"
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    env.update(PYTHONPATH=str(ROOT), ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    res = subprocess.run([sys.executable, str(ROOT / "experiments" / "compile_check.py"),
                          "--tiny", "--chips", "v5e", "--schemes", schemes,
                          "--capacity_factor", "0", "--out", str(out)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out.read_text()


def _row(text: str, scheme: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| v5e | {scheme} |"))
    return [c.strip() for c in line.strip("|").split("|")]


@pytest.mark.slow
@NO_LIBTPU
def test_compile_check_tiny(tmp_path):
    """Property: experiments/compile_check.py AOT-compiles an UltraMemV2 layer fwd+bwd with its
    tables sharded over a 4-chip v5e topology (both XLA schemes, tiny shape), with no whole
    table all-gathered, and writes the memory-analysis table."""
    text = _compile_check(tmp_path, "psum,all_to_all")
    for scheme in ("psum", "all_to_all"):
        assert _row(text, scheme)[-1] == "no"


@NO_LIBTPU
def test_compile_check_tiny_with_pallas_kernels(tmp_path):
    """Property: the same layer with implementation="pallas_tpu" (Tucker retrieval kernel per
    token shard, embedding-bag / row-dot kernels on each chip's rows inside the psum lookup)
    AOT-compiles for 4 v5e chips: the optimized HLO has Mosaic calls and no whole table
    all-gathered."""
    row = _row(_compile_check(tmp_path, "psum_pallas"), "psum_pallas")
    assert int(row[-2]) > 0 and row[-1] == "no", row
