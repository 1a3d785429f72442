"""UltraMem and UltraMemV2: retrieval == brute force when the pre-selection covers the grid;
IVE with E = 1 is the unexpanded layer and E > 1 equals an explicit virtual table V W_p;
MCS slice weighting; PEER coefficients; finite-difference gradients (float64) to queries,
keys, cores, values and pre-values; V2 sharing with g = 1 equals per-layer tables and the
sharing windows match V2 Table 7; init presets (calibrated mean score 1, eq. 26's worked
example); Tucker penalty known values; skip-layer wiring by construction; loop == scan with
shared tables; prepared decode constants give the same outputs and are dropped by release;
config errors name the field."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.models import LM, LMConfig
from seedjax.nn.memory import (DecodeConstant, SharedValueTables, UltraMem, UltraMemConfig,
                               UltraMemV2, UltraMemV2Config, prepare_decode, release_decode,
                               shared_tables)
from seedjax.nn.memory.tdqkr import TDQKRConfig, TuckerRetrieval
from seedjax.nn.memory.ultramem_v2 import eq26_value_std
from seedjax.nn.params import param_metadata
from seedjax.train.flops import lm_forward_flops_per_token

V1 = UltraMemConfig(d_model=16, n_keys=4, heads=2, k_dim=8, v_dim=8, topk=6, expand=4)
V2 = UltraMemV2Config(d_model=16, n_keys=6, k_dim=8, v_dim=8, p_dim=4, topk=6, ffn_dim=32)


def _x(shape=(2, 5, 16), seed=1, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _params(m):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(m)))


def _brute_scores(m, x):
    """All n^2 cells' per-core scores [T, H, n^2, h_c] from the module's own queries/keys."""
    r = m.retrieval
    q_row, q_col = r.queries(x)
    k = r.normalized_keys()
    s_row = jnp.einsum("...hrd,hnrd->...hnr", q_row, k[:, 0])
    s_col = jnp.einsum("...hrd,hnrd->...hnr", q_col, k[:, 1])
    grid = jnp.einsum("...hir,chrs,...hjs->...hijc", s_row, r.cores[...], s_col)
    return grid.reshape(*grid.shape[:-3], -1, grid.shape[-1])


@pytest.mark.parametrize("query_mode", ["shared_pair", "per_head", "per_rank"])
def test_retrieval_equals_brute_force_when_preselection_covers_the_grid(query_mode):
    cfg = dataclasses.replace(V1, topk_side=8, query_mode=query_mode)     # 8 = 2 * 4 keys/side
    m = UltraMem(cfg, rngs=nnx.Rngs(0))
    x = _x((7, 16))
    scores, cells = m.retrieval(x)
    grid = _brute_scores(m, x)
    want_s, want_i = jax.lax.top_k(grid.sum(-1), cfg.topk)
    np.testing.assert_array_equal(cells, want_i)
    np.testing.assert_allclose(scores, jnp.take_along_axis(grid, want_i[..., None], axis=-2),
                               rtol=1e-5, atol=1e-5)


def test_ive_with_e1_is_the_unexpanded_layer():
    """E = 1: rows are the grid cells (no shuffle, one block) and the output is
    (sum_j s_c[j] V[i_j, slice c]) W_out."""
    m = UltraMem(dataclasses.replace(V1, expand=1), rngs=nnx.Rngs(0))
    x = _x()
    scores, rows, blocks = m.retrieve(x)
    _, cells = m.retrieval(x)
    np.testing.assert_array_equal(rows, cells)
    assert int(jnp.max(blocks)) == 0
    p = _params(m)
    v = p["values"].reshape(16, 2, 4)                                     # [N, h_c, Dv/h_c]
    s = np.asarray(scores, np.float64)
    y = np.einsum("bthmc,bthmcd->btcd", s, v[np.asarray(rows)]).reshape(2, 5, 8)
    np.testing.assert_allclose(m(x), y @ p["w_out"], rtol=1e-4, atol=1e-5)


def test_ive_equals_an_explicit_virtual_table():
    """E = 4: out = sum_j s_j (V[i_j] W_{p_j}) with the virtual table V W_p materialised, the
    shuffle a permutation, and every physical row present once in each virtual block."""
    m = UltraMem(dataclasses.replace(V1, cores=1), rngs=nnx.Rngs(0))
    x = _x()
    scores, rows, blocks = m.retrieve(x)
    p = _params(m)
    w_blocks = p["w_out"].reshape(4, 8, 16)                                # W_p [Dv, D]
    virtual = np.einsum("nd,pde->pne", p["values"], w_blocks)             # [E, N, D]
    y = np.einsum("bthm,bthme->bte", np.asarray(scores[..., 0], np.float64),
                  virtual[np.asarray(blocks), np.asarray(rows)])
    np.testing.assert_allclose(m(x), y, rtol=1e-4, atol=1e-5)
    from seedjax.nn.memory.tdqkr import ive_permutation
    perm = ive_permutation(4 * 16, 0)
    assert sorted(perm) == list(range(64))
    for blk in range(4):
        assert sorted(perm[(perm // 16) == blk] % 16) == list(range(16))


def test_v2_peer_coefficients_and_plain_values():
    m = UltraMemV2(V2, rngs=nnx.Rngs(0))
    x = _x()
    scores, rows = m.retrieve(x)
    p = _params(m)
    pre = np.asarray(x, np.float64) @ p["w_pre"]                           # [B, T, Dp]
    a = np.einsum("bthmd,btd->bthm", p["pre_values"][np.asarray(rows)], pre)
    v = p["values"].reshape(-1, 2, 4)[np.asarray(rows)]                   # [B,T,H,m,h_c,4]
    y = np.einsum("bthmc,bthm,bthmcd->btcd", np.asarray(scores, np.float64), a, v)
    np.testing.assert_allclose(m(x), y.reshape(2, 5, 8) @ p["w_out"], rtol=1e-4, atol=1e-6)
    plain = UltraMemV2(dataclasses.replace(V2, values="plain"), rngs=nnx.Rngs(0))
    assert plain.pre_values is None and plain.w_pre is None
    assert plain(x).shape == (2, 5, 16)


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_finite_difference_gradients_float64(kind):
    """Directional derivatives of sum(y * c) match central differences in float64 for the
    queries, keys, cores, values and pre-values (eps small: the selection does not change)."""
    with jax.enable_x64(True):
        if kind == "v1":
            m = UltraMem(V1, dtype=jnp.float64, rngs=nnx.Rngs(0))
            names = ("retrieval/w_query", "retrieval/keys", "retrieval/cores", "values", "w_out",
                     "retrieval/query_scale", "retrieval/key_scale")
        else:
            m = UltraMemV2(V2, dtype=jnp.float64, rngs=nnx.Rngs(0))
            names = ("retrieval/w_query", "retrieval/keys", "retrieval/cores", "values",
                     "pre_values", "w_pre", "w_out")
        graphdef, state = nnx.split(m)
        params = _params(m)
        x, ct = _x((3, 16), dtype=np.float64), _x((3, 16), seed=2, dtype=np.float64)

        def f(p):
            st = jax.tree.map(lambda v: v, state)
            nnx.replace_by_pure_dict(st, p)
            return jnp.sum(nnx.merge(graphdef, st)(x) * ct)

        grads = jax.jit(jax.grad(f))(params)
        f = jax.jit(f)
        rng = np.random.default_rng(3)
        get = lambda tree, name: tree[name.split("/")[0]][name.split("/")[1]] if "/" in name \
            else tree[name]

        def with_(name, value):
            p = jax.tree.map(lambda a: a, params)
            if "/" in name:
                p[name.split("/")[0]][name.split("/")[1]] = value
            else:
                p[name] = value
            return p

        for name in names:
            g, base = np.asarray(get(grads, name)), get(params, name)
            assert np.abs(g).max() > 0, name
            d = rng.standard_normal(g.shape)
            fd = (f(with_(name, base + 1e-6 * d)) - f(with_(name, base - 1e-6 * d))) / 2e-6
            np.testing.assert_allclose(np.vdot(g, d), float(fd), rtol=1e-5, atol=1e-8,
                                       err_msg=name)


def test_sharing_windows_match_v2_table7():
    """V2 Table 7 (1-indexed there): S4 windows of layers 1, 2, 3, 4, 5, 24 of 24."""
    one = lambda scheme, layer: [t + 1 for t in shared_tables(scheme, layer - 1, 24, 4)]
    assert [one("noring", l) for l in (1, 2, 3, 4, 5, 24)] == [
        [1, 2, 3, 4], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6], [4, 5, 6, 7], [21, 22, 23, 24]]
    assert [one("ring", l) for l in (1, 2, 3, 4, 5, 24)] == [
        [24, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6], [4, 5, 6, 7], [23, 24, 1, 2]]
    assert [one("block", l) for l in (1, 2, 3, 4, 5, 24)] == [
        [1, 2, 3, 4]] * 4 + [[5, 6, 7, 8], [21, 22, 23, 24]]


@pytest.mark.parametrize("scheme", ["ring", "noring", "block"])
def test_v2_sharing_with_group_1_equals_per_layer_tables(scheme):
    shared_cfg = dataclasses.replace(V2, sharing=scheme, share_group=1, n_layers=3)
    tables = SharedValueTables(shared_cfg, value_std=0.1, rngs=nnx.Rngs(5))()
    x = _x()
    for layer in range(3):
        shared = UltraMemV2(dataclasses.replace(shared_cfg, layer=layer), rngs=nnx.Rngs(0))
        own = UltraMemV2(V2, rngs=nnx.Rngs(0))
        rows = slice(layer * 36, (layer + 1) * 36)
        own.values[...] = tables["values"][rows]
        own.pre_values[...] = tables["pre_values"][rows]
        np.testing.assert_allclose(shared(x, tables), own(x), rtol=1e-6, atol=1e-7)


def test_v2_sharing_enlarges_the_key_grid_and_stays_in_the_window():
    c = dataclasses.replace(V2, sharing="ring", share_group=4, n_layers=5, layer=0)
    assert c.keys_per_side == 12 and c.local_slots == 4 * 36       # sqrt(4) * 6 keys per side
    m = UltraMemV2(c, rngs=nnx.Rngs(0))
    _, rows = m.retrieve(_x((64, 16)))
    tables = set(np.unique(np.asarray(rows) // 36).tolist())
    assert tables <= {4, 0, 1, 2} and len(tables) > 1               # window of layer 0: 4,0,1,2


def test_paper_init_calibrates_mean_score_and_eq26():
    m = UltraMemV2(V2, rngs=nnx.Rngs(0))
    scores, _ = m.retrieve(_x((512, 16), seed=7))                   # fresh N(0,1) inputs
    assert abs(float(jnp.mean(jnp.sum(scores, -1))) - 1.0) < 0.15
    # eq. 26 worked example of the spec (227M: ffn 2496, m 32, H 1, Dp = Dv = 192, L 20,
    # sigma_s^2 = 0.1): sigma_V ~ 0.066
    c = UltraMemV2Config(d_model=768, n_keys=8, k_dim=8, v_dim=192, p_dim=192, topk=32,
                         ffn_dim=2496, n_layers=20)
    assert abs(float(eq26_value_std(c, 0.1 ** 0.5)) - 0.0662) < 5e-4
    official = UltraMemV2(dataclasses.replace(V2, init="official"), rngs=nnx.Rngs(0))
    assert abs(float(jnp.std(official.values[...])) - 0.02) < 0.006
    np.testing.assert_allclose(official.retrieval.query_scale[...], 8 ** -0.4, rtol=1e-6)


def test_tucker_penalty_known_values():
    r = TuckerRetrieval(TDQKRConfig(d_model=8, n_keys=4, heads=1, k_dim=4, topk=2,
                                    aux_coef=0.5), rngs=nnx.Rngs(0))
    r.cores[...] = jnp.asarray([[[[2.0, 0.0], [0.0, 0.5]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    np.testing.assert_allclose(r.tucker_penalty(), 0.5 * (0.5 - 0.15) ** 2, rtol=1e-5)
    r.cores[...] = r.cores[...].at[0, 0, 1, 1].set(0.1)
    assert float(r.tucker_penalty()) == 0.0
    m = UltraMem(dataclasses.replace(V1, aux_coef=0.001), rngs=nnx.Rngs(0))
    y, aux = m(_x())
    assert set(aux) == {"tucker_penalty"} and float(aux["tucker_penalty"]) >= 0


def test_values_labels():
    m = UltraMemV2(V2, rngs=nnx.Rngs(0))
    groups, decay = param_metadata(m, "lr_group"), param_metadata(m, "weight_decay")
    assert groups["values"] == groups["pre_values"] == "memory_values"
    assert groups["retrieval"]["keys"] == "default"
    assert decay["values"] is True and decay["retrieval"]["query_scale"] is False


BASE = dict(d_model=16, n_layers=4, n_heads=2, mlp_dim=32, max_seq_len=12)


def test_skip_layer_wiring_by_construction():
    """memory_layers="1:2": block outputs before block 2 equal the memory-free LM's; block 2's
    output is the memory-free block 2 output plus memory(normalised FFN input of block 1)."""
    cfg = LMConfig(**BASE, memory="ultramem", memory_layers="1:2",
                   memory_kwargs={"n_keys": 4, "k_dim": 8, "topk": 4, "v_dim": 8})
    lm = LM(cfg, rngs=nnx.Rngs(0))
    toks = jax.random.randint(jax.random.key(0), (2, 12), 0, 256)
    inter = lm(toks, return_intermediates=True).intermediates["layer_outputs"]
    blocks, mem = lm.layers.blocks, lm.layers.skip_memories[0]
    H = lm.embed(toks)
    outs = []
    for i, b in enumerate(blocks):
        H, _, _, r = b(H, tap=True)
        if i == 1:
            tap = r["ffn_input"]
        if i == 2:
            H = H + mem(tap)
        outs.append(H)
    np.testing.assert_allclose(inter, jnp.stack(outs), rtol=1e-5, atol=1e-6)
    no_mem = jnp.stack(outs[:2])
    np.testing.assert_allclose(inter[:2], no_mem, rtol=1e-6)
    assert float(jnp.abs(inter[2] - blocks[2](inter[1])[0]).max()) > 0


def test_v2_every_block_loop_equals_scan_with_shared_tables():
    kw = {"n_keys": 4, "k_dim": 8, "topk": 4, "v_dim": 8, "p_dim": 4, "sharing": "ring",
          "share_group": 2}
    cfg = LMConfig(**BASE, memory="ultramem_v2", memory_layers="every", memory_kwargs=kw)
    loop, scan = LM(cfg, rngs=nnx.Rngs(0)), LM(cfg.replace(scan_layers=True), rngs=nnx.Rngs(0))
    toks = jax.random.randint(jax.random.key(1), (2, 12), 0, 256)
    np.testing.assert_allclose(loop(toks).logits, scan(toks).logits, atol=2e-5)
    assert loop.memory_tables.values[...].shape == (4 * 16, 8)
    flops = lm_forward_flops_per_token(cfg, 12)
    assert flops["mem_values"] == 4 * 2 * 4 * 8 and flops["mem_pre"] > 0

    def loss(model):
        return jnp.mean(model(toks).logits ** 2)

    grads = nnx.grad(loss)(loop)
    g_tables = grads["memory_tables"]["values"][...]
    assert float(jnp.abs(g_tables).sum()) > 0
    assert float(jnp.abs(grads["layers"]["blocks"][3]["memory"]["retrieval"]["keys"][...]).sum()) > 0


@pytest.mark.parametrize("cls,cfg", [(UltraMem, V1), (UltraMemV2, V2)])
def test_prepared_decode_constants_give_the_same_outputs(cls, cfg):
    """prepare_decode stores the normalised rank-major keys and the rank-1 vectors; calls
    (jitted through split/merge) equal the parameter path; keys get no gradient while prepared
    (inference only) and do again after release_decode."""
    m = cls(cfg, rngs=nnx.Rngs(0))
    x = jnp.asarray(_x())
    forward = nnx.jit(lambda mod, x: mod(x))
    key_grad = nnx.jit(lambda mod: nnx.grad(lambda mod: jnp.sum(mod(x) ** 2))(mod)
                       ["retrieval"]["keys"][...])
    want = forward(m, x)
    assert prepare_decode(m) == 1 and prepare_decode(m) == 0       # idempotent
    assert isinstance(m.retrieval.decode_row_keys, DecodeConstant)
    n, r, dk = m.retrieval.config.n_keys, m.retrieval.config.rank, m.retrieval.config.k_dim
    for keys in (m.retrieval.decode_row_keys, m.retrieval.decode_col_keys):
        assert keys[...].shape == (m.retrieval.config.heads, r, n, dk)
    np.testing.assert_allclose(forward(m, x), want, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(key_grad(m)).sum()) == 0
    release_decode(m)
    assert m.retrieval.decode_row_keys is None
    assert float(jnp.abs(key_grad(m)).sum()) > 0


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"UltraMemConfig.topk=70 is larger than the candidate "
                                         r"count topk_side\*\*2=64"):
        UltraMemConfig(d_model=16, n_keys=4, topk=70, topk_side=8)
    with pytest.raises(ValueError, match="UltraMemConfig.expand=3 must be a perfect square"):
        UltraMemConfig(d_model=16, n_keys=4, expand=3)
    with pytest.raises(ValueError, match="UltraMemConfig.v_dim=9 is not divisible by cores=2"):
        UltraMemConfig(d_model=16, n_keys=4, v_dim=9)
    with pytest.raises(ValueError, match=r"topk_side=5 must be <= the keys per side sqrt\(expand\) \* n_keys=4"):
        UltraMemConfig(d_model=16, n_keys=4, expand=1, topk=4, topk_side=5)
    with pytest.raises(ValueError, match="exceed int32"):
        UltraMemConfig(d_model=16, n_keys=30000, expand=4)
    with pytest.raises(ValueError, match="UltraMemV2Config.v_dim=6 is not divisible by cores=4"):
        UltraMemV2Config(d_model=16, v_dim=6, cores=4)
    with pytest.raises(ValueError, match="UltraMemV2Config.sharing='rings' is not allowed"):
        UltraMemV2Config(d_model=16, sharing="rings")
    with pytest.raises(ValueError, match="UltraMemV2Config.share_group=4 needs sharing"):
        UltraMemV2Config(d_model=16, share_group=4)
    with pytest.raises(ValueError, match="UltraMemV2Config.values='dense' is not allowed"):
        UltraMemV2Config(d_model=16, values="dense")
    with pytest.raises(ValueError, match=r"pair '3:1' has v < k"):
        LMConfig(**BASE, memory="ultramem", memory_layers="3:1")
    with pytest.raises(ValueError, match=r"pair '1:4' is out of range; blocks are 0..3"):
        LMConfig(**BASE, memory="ultramem", memory_layers="1:4")
    with pytest.raises(ValueError, match="needs model.memory set"):
        LMConfig(**BASE, memory_layers="every")
    with pytest.raises(ValueError, match="skip pairs .*scan_layers=False"):
        LM(LMConfig(**BASE, memory="ultramem", memory_layers="0:1", scan_layers=True,
                    memory_kwargs={"n_keys": 4, "k_dim": 8, "topk": 4}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.memory='ultra' is not a registered memory"):
        LM(LMConfig(**BASE, memory="ultra", memory_layers="every"), rngs=nnx.Rngs(0))


def test_k_dim_for_memory_to_ffn_ratio():
    """mem_to_ffn_ratio picks the k_dim whose memory/FFN FLOP ratio is nearest the target (V2
    §4.2.4 sets MCP by Dk); the LM factory accepts it instead of k_dim, not with it."""
    from seedjax.nn.memory.ultramem_v2 import k_dim_for_ratio
    fields = dict(d_model=128, n_keys=64, topk=16, v_dim=48, p_dim=16, ffn_dim=320)
    dk = k_dim_for_ratio(0.2, **fields)
    ratios = {d: UltraMemV2Config(k_dim=d, **fields).memory_to_ffn_ratio for d in (dk - 8, dk,
                                                                                   dk + 8)}
    assert min(ratios, key=lambda d: abs(ratios[d] - 0.2)) == dk
    cfg = LMConfig(**{**BASE, "d_model": 128, "mlp_dim": 320}, memory="ultramem_v2",
                   memory_layers="every", memory_kwargs={"n_keys": 64, "topk": 16, "v_dim": 48,
                                                         "p_dim": 16, "mem_to_ffn_ratio": 0.2})
    assert lm_forward_flops_per_token(cfg, 12)["mem_keys"] == 4 * 2 * 2 * 64 * 2 * dk
    with pytest.raises(ValueError, match="k_dim or mem_to_ffn_ratio"):
        LM(LMConfig(**BASE, memory="ultramem_v2", memory_layers="every",
                    memory_kwargs={"k_dim": 8, "mem_to_ffn_ratio": 0.2}), rngs=nnx.Rngs(0))
