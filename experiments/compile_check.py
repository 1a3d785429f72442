"""TPU AOT compile check of an UltraMemV2 layer whose value and pre-value tables are row-sharded
over 4 chips and read with ``seedjax.ops.sharded_lookup`` (forward + backward).

  PYTHONPATH=. python experiments/compile_check.py [--chips v5e,v5p] [--schemes psum,all_to_all]
      [--capacity_factor 2] [--tiny] [--out results/kernels/ultramem_v2_sharded_compile.md]

Needs libtpu (``pip install "jax[tpu]==0.10.2"``) and JAX_PLATFORMS unset (or containing tpu):
``jax.experimental.topologies.get_topology_desc`` gives the devices of a 4-chip v5e ("v5e:2x2")
or v5p ("v5p:2x2x1") slice on this CPU host, the layer's jitted fwd+bwd is traced on
ShapeDtypeStructs carrying the shardings (tables ``P("mem", None)`` by the ``fsdp_tp_mem``
rules; the batch ``P("mem")``: the memory-parallel group is also the data-parallel group, as in
UltraMem's official code), lowered and compiled by the real TPU compiler, and the per-chip
``memory_analysis()`` is written as a markdown table. Nothing runs on a TPU.

Per row: scheme ("psum": tokens all-gathered over mem, masked local gather, psum of [t, Dv];
"all_to_all": row ids and rows routed to/from their owner chips, capacity None = worst case
t K per destination, or ``--capacity_factor`` f: ceil(f t K / S); "gspmd": the control, the
same layer with plain ``jnp.take`` gathers left to XLA's partitioner), compile wall time, and
the collectives in the optimized HLO (and whether any all-gather materialises a whole table).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    """CLI flags, defined only when run as a script (no global flags on import)."""
    flags.DEFINE_list("chips", ["v5e", "v5p"], "TPU generations (4-chip slices): v5e, v5p.")
    flags.DEFINE_list("schemes", ["gspmd", "psum", "all_to_all", "psum_pallas"],
                      "lookup schemes: psum, all_to_all (seedjax.ops.sharded_lookup; XLA "
                      "gathers), psum_pallas (psum with the Pallas TPU kernels: embedding_bag / "
                      "row_dot on each chip's rows, Tucker retrieval per token shard) and gspmd "
                      "(the control: plain gathers, table_sharding=None, partitioned by XLA).")
    flags.DEFINE_float("capacity_factor", 2.0,
                       "also compile all_to_all with this capacity factor (0: skip that row).")
    flags.DEFINE_bool("tiny", False, "tiny shapes (the test): d 64, knum 16, Dk 32, Dv 32, "
                      "Dp 16, top-m 8, batch 4 x 32 tokens.")
    flags.DEFINE_integer("batch", 4, "sequences per step (global; sharded over the 4 chips).")
    flags.DEFINE_integer("seq", 2048, "tokens per sequence.")
    flags.DEFINE_string("out", "results/kernels/ultramem_v2_sharded_compile.md",
                        "markdown output.")

TOPOLOGIES = {"v5e": "v5e:2x2", "v5p": "v5p:2x2x1"}
N_CHIPS = 4
PRODUCTION = dict(d_model=1024, n_keys=512, k_dim=256, v_dim=256, p_dim=128, topk=64)
TINY = dict(d_model=64, n_keys=16, k_dim=32, v_dim=32, p_dim=16, topk=8)
MIB = 2 ** 20


SCHEMES = {  # row label -> (table_sharding, implementation)
    "gspmd": (None, "xla"), "psum": ("psum", "xla"), "all_to_all": ("all_to_all", "xla"),
    "psum_pallas": ("psum", "pallas_tpu")}


def layer_config(scheme: str, capacity_factor, tiny: bool):
    from seedjax.nn.memory import UltraMemV2Config
    sharding, implementation = SCHEMES[scheme]
    # init="official": the same shapes as "paper" without the calibration forward pass
    return UltraMemV2Config(**(TINY if tiny else PRODUCTION), heads=1, rank=2, cores=2,
                            init="official", table_sharding=sharding, table_axis="mem",
                            table_capacity_factor=capacity_factor,
                            implementation=implementation)


def compile_layer(chip: str, scheme: str, capacity_factor, *, tiny: bool, batch: int,
                  seq: int) -> dict:
    """AOT-compiles loss = sum(layer(x)) and its gradient w.r.t. all params on a 4-chip
    ``chip`` slice; returns the memory analysis, compile time and HLO collective counts."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.experimental import topologies
    from jax.sharding import NamedSharding, PartitionSpec as P

    from seedjax.nn.memory import UltraMemV2
    from seedjax.sharding import get_rules, make_mesh, param_shardings
    from seedjax.train.state import model_def

    cfg = layer_config(scheme, capacity_factor, tiny)
    topo = topologies.get_topology_desc(topology_name=TOPOLOGIES[chip], platform="tpu")
    mesh = make_mesh({"mem": N_CHIPS}, devices=topo.devices[:N_CHIPS])
    abstract = nnx.eval_shape(lambda: UltraMemV2(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    mdef = model_def(abstract)
    p_sh = param_shardings(abstract, mesh, get_rules("fsdp_tp_mem"))
    shapes = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    p_sds = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                         shapes, p_sh)
    x_sh = NamedSharding(mesh, P("mem"))
    x_sds = jax.ShapeDtypeStruct((batch, seq, cfg.d_model), jnp.bfloat16, sharding=x_sh)

    def loss_and_grad(params, x):
        def loss(p):
            return jnp.sum(mdef.merge(p)(x).astype(jnp.float32))
        return jax.value_and_grad(loss)(params)

    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        fn = jax.jit(loss_and_grad, in_shardings=(p_sh, x_sh),
                     out_shardings=(NamedSharding(mesh, P()), p_sh))
        compiled = fn.trace(p_sds, x_sds).lower().compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    hlo = compiled.as_text()
    table_shapes = {k: f"{jnp.dtype(s.dtype).name[0]}{jnp.dtype(s.dtype).itemsize * 8}"
                       f"[{','.join(map(str, s.shape))}]" for k, s in shapes.items()
                    if k in ("values", "pre_values")}
    flat_sh = _flat(p_sh)
    gathers = [ln for ln in hlo.splitlines() if re.search(r" all-gather(-start)?\(", ln)]
    return {
        "chip": chip, "device_kind": topo.devices[0].device_kind, "scheme": scheme,
        "capacity": "worst case" if capacity_factor is None or scheme != "all_to_all"
        else f"factor {capacity_factor:g}",
        "compile_s": seconds,
        "argument": mem.argument_size_in_bytes, "output": mem.output_size_in_bytes,
        "temp": mem.temp_size_in_bytes, "code": mem.generated_code_size_in_bytes,
        "alias": mem.alias_size_in_bytes,
        "collectives": {op: len(re.findall(rf" {op}(-start)?\(", hlo))
                        for op in ("all-to-all", "all-reduce", "all-gather", "reduce-scatter",
                                   "collective-permute")},
        "kernels": len(re.findall(r"tpu_custom_call", hlo)),
        "tables_all_gathered": [k for k, t in table_shapes.items()
                                if any(f"{t}{{" in ln.split("=", 1)[-1] for ln in gathers)],
        "config": cfg, "param_shapes": {k: (tuple(s.shape), str(s.dtype), str(flat_sh[k].spec))
                                        for k, s in _flat(shapes).items()},
    }


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "/"))
        else:
            out[key] = v
    return out


def package_versions() -> str:
    """jax, jaxlib, flax and libtpu versions as one line (compile pages)."""
    import importlib.metadata as md
    vs = []
    for pkg in ("jax", "jaxlib", "flax", "libtpu"):
        try:
            vs.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            vs.append(f"{pkg} (not installed)")
    return ", ".join(vs)


def render(rows: list[dict], *, tiny: bool, batch: int, seq: int, argv: list[str],
           wall_s: float) -> str:
    import platform
    c = rows[0]["config"]
    n_rows = c.n_slots
    k = c.heads * c.topk
    t_chip = batch * seq // N_CHIPS
    lines = [
        "# UltraMemV2 layer with row-sharded tables: TPU AOT compile (4 chips)", "",
        f"Command: `PYTHONPATH=. python {' '.join(argv)}` ({time.strftime('%Y-%m-%d')}).", "",
        f"Versions: {package_versions()}; Python {platform.python_version()}; compiled on a CPU-only "
        f"host ({platform.machine()}, {os.cpu_count()} cores) for libtpu topologies "
        + ", ".join(f"`{TOPOLOGIES[ch]}`" for ch in dict.fromkeys(r["chip"] for r in rows))
        + ". Nothing was executed on a TPU: this checks that the program compiles and what XLA "
        "plans to allocate per chip.", "",
        "## What is compiled", "",
        f"`jax.jit(value_and_grad(sum(UltraMemV2(x))))` w.r.t. all layer parameters, "
        f"{'TINY test shape' if tiny else 'production-ish shape'}: d_model {c.d_model}, "
        f"knum {c.n_keys} (N = {n_rows:,} rows in the layer's own table), Dk {c.k_dim}, "
        f"Dv {c.v_dim}, Dp {c.p_dim}, heads {c.heads}, top-m {c.topk} (row/col top "
        f"{c.topk_side}), Tucker rank {c.rank}, {c.cores} MCS cores, PEER values; params "
        "float32, compute bfloat16 (x and the projections; the gathers and bag sums accumulate "
        "in float32).", "",
        f"Mesh: {N_CHIPS} chips on axis `mem` (seedjax mesh, Auto axis types; the other four "
        f"axes size 1). x: bfloat16 [{batch}, {seq}, {c.d_model}] sharded `P('mem')` on the "
        f"batch ({t_chip} tokens per chip). Parameter shardings from the `fsdp_tp_mem` "
        "rules:", "",
        "| parameter | shape | dtype | spec |", "|---|---|---|---|",
        *[f"| {k} | {s} | {d} | {sp} |" for k, (s, d, sp) in rows[0]["param_shapes"].items()],
        "",
        f"Table bytes per chip: values {n_rows // N_CHIPS * c.v_dim * 4 / MIB:.2f} MiB, "
        f"pre-values {n_rows // N_CHIPS * c.p_dim * 4 / MIB:.2f} MiB (of "
        f"{n_rows * (c.v_dim + c.p_dim) * 4 / MIB:.2f} MiB unsharded). Requests per chip "
        f"t K = {t_chip * k:,} (psum scheme: all {batch * seq * k:,} after the token "
        "all-gather).", "",
        "## Per-chip memory_analysis()", "",
        "| chip | scheme | a2a capacity | compile s | argument MiB | output MiB | temp MiB | "
        "generated code MiB | collectives in optimized HLO | Pallas calls | "
        "whole table all-gathered |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        col = ", ".join(f"{op} {n}" for op, n in r["collectives"].items() if n)
        cap = r["capacity"] if r["scheme"] == "all_to_all" else "-"
        lines.append(
            f"| {r['chip']} | {r['scheme']} | {cap} | {r['compile_s']:.1f} | "
            f"{r['argument'] / MIB:.1f} | {r['output'] / MIB:.1f} | {r['temp'] / MIB:.1f} | "
            f"{r['code'] / MIB:.2f} | {col or 'none'} | {r['kernels']} | "
            f"{'YES: ' + ', '.join(r['tables_all_gathered']) if r['tables_all_gathered'] else 'no'} |")
    lines += [
        "", "Columns: `argument_size_in_bytes` (params + x on one chip), "
        "`output_size_in_bytes` (loss + gradients: the table gradients are sharded like the "
        "tables), `temp_size_in_bytes` (activations kept for the backward pass, gather "
        "buffers, all-to-all buffers), `generated_code_size_in_bytes`. Collectives are counted "
        "from `compiled.as_text()` (async `-start` forms included); 'whole table all-gathered' "
        "checks that no all-gather produces an array of a full table's shape; 'Pallas calls' "
        "counts `tpu_custom_call` ops (the Mosaic kernels) in the optimized HLO.", "",
        "all_to_all capacity: 'worst case' = t K slots per destination (exact, never drops, "
        f"buffers [S, t K] ids and [S, t K, D] rows: S = {N_CHIPS} times the requests); "
        "'factor f' = ceil(f t K / S) slots, requests beyond it are dropped and counted "
        "(`sharded_embedding_bag(..., return_dropped=True)`).", "",
        "## Reading", "",
        "- Layout: x is batch-sharded over `mem`, so the psum scheme (which needs tokens "
        "replicated over the table axis) all-gathers the ids and weights of all "
        f"{batch * seq:,} tokens and every chip gathers and reduces all of them; its temp "
        f"carries {N_CHIPS}x the per-chip gather work of all_to_all. psum is the scheme for a "
        "table axis that does not also shard the batch; all_to_all is the one for this layout.",
    ]
    gathered = [f"{r['chip']} {r['scheme']} ({', '.join(r['tables_all_gathered'])})"
                for r in rows if r["tables_all_gathered"]]
    ours = [g for g, r in zip(gathered, [r for r in rows if r["tables_all_gathered"]])
            if r["scheme"] != "gspmd"]
    lines.append("- Whole tables all-gathered: " + ("; ".join(gathered) if gathered else "none")
                 + ". Among the sharded-lookup rows (psum, all_to_all): "
                 + ("; ".join(ours) if ours else "none, so no chip materialises a whole table")
                 + ". An all-gathered table costs its full size in bytes per chip and per step "
                 "and grows with the table, not with the tokens.")
    for r in rows:
        if r["scheme"] == "psum_pallas":
            xla = next((x for x in rows if x["chip"] == r["chip"] and x["scheme"] == "psum"), None)
            lines.append(
                f"- psum_pallas ({r['chip']}): the psum lookup with `implementation=\"pallas_tpu\"` "
                f"compiles with {r['kernels']} Mosaic calls (Tucker retrieval per token shard, "
                "embedding bag and row dot on each chip's rows, their backward kernels); temp "
                f"{r['temp'] / MIB:.0f} MiB"
                + (f" vs {xla['temp'] / MIB:.0f} MiB for the XLA psum row." if xla else "."))
    for r in rows:
        if r["scheme"] == "all_to_all":
            lines.append(f"- all_to_all: {r['collectives']['all-to-all']} all-to-alls in the "
                         "optimized HLO of the fwd+bwd (the pre-value and value reads bucket the "
                         "same ids; the id exchange has no backward, each row return has one).")
            break
    lines += ["", f"Script wall time {wall_s:.0f} s (compile times are on a shared 2-core host "
              "and vary with its load)."]
    return "\n".join(lines)


def main(argv):
    del argv
    from seedjax.validation import check_choice, check_int
    with cli.expected_errors():  # the flags first, then the environment
        for flag, names, allowed in (("--schemes", FLAGS.schemes, SCHEMES),
                                     ("--chips", FLAGS.chips, TOPOLOGIES)):
            if not names:
                raise ValueError(f"{flag} is empty; allowed: {sorted(allowed)}")
            for name in names:
                check_choice(flag, name, tuple(sorted(allowed)))
        if not FLAGS.tiny:
            check_int("--seq", FLAGS.seq)
            if check_int("--batch", FLAGS.batch) % N_CHIPS:
                raise ValueError(f"--batch={FLAGS.batch} must be a multiple of {N_CHIPS} (the "
                                 "batch is sharded over the chips)")
        if FLAGS.capacity_factor < 0:
            raise ValueError(f"--capacity_factor={FLAGS.capacity_factor} must be >= 0 "
                             "(0: skip that row)")
        if "JAX_PLATFORMS" in os.environ and "tpu" not in os.environ["JAX_PLATFORMS"]:
            raise ValueError(f"JAX_PLATFORMS={os.environ['JAX_PLATFORMS']!r} hides the TPU "
                             "topology: unset it (or include tpu)")
    batch, seq = (4, 32) if FLAGS.tiny else (FLAGS.batch, FLAGS.seq)
    arms = [(s, None) for s in FLAGS.schemes]
    if "all_to_all" in FLAGS.schemes and FLAGS.capacity_factor > 0:
        arms.append(("all_to_all", FLAGS.capacity_factor))
    rows, t0 = [], time.perf_counter()
    for chip in FLAGS.chips:
        for scheme, cap in arms:
            r = compile_layer(chip, scheme, cap, tiny=FLAGS.tiny, batch=batch, seq=seq)
            print(f"{chip} {scheme} cap={r['capacity']}: compile {r['compile_s']:.1f} s, "
                  f"temp {r['temp'] / MIB:.1f} MiB, argument {r['argument'] / MIB:.1f} MiB, "
                  f"{r['collectives']}", flush=True)
            rows.append(r)
    md = render(rows, tiny=FLAGS.tiny, batch=batch, seq=seq,
                argv=["experiments/compile_check.py", *sys.argv[1:]],
                wall_s=time.perf_counter() - t0)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as f:
        f.write(md)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    cli.run(main, define_flags)
