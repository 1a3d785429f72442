"""Roofline table and TPU compile report for the embedding-bag kernels.

    python -m kernels_pallas.embedding_bag.bench [--quick | --full] [--specs a,b]
    python -m kernels_pallas.embedding_bag.bench --compile-report [PATH]

Roofline: for each production arg spec, bytes moved (gathered rows + indices + weights + groups
+ output, from shapes; ``ArgSpec.cost``) and FLOPs (a multiply-add per gathered element), the
measured time of one forward call, achieved GB/s and GFLOP/s, and the fraction of the backend's
peak bandwidth. On a CPU host the timed path is the XLA reference (the Pallas TPU kernel cannot
run here) and the peak is a measured memcpy bandwidth; ``--quick`` (default) runs T/8 tokens
and N/4 rows (tables stay >= 128 MiB, far beyond the caches).
The "ideal us" columns are bytes / HBM bandwidth of v5e and v5p (computed, not measured).

Compile report: AOT compiles of the public API (implementation="pallas_tpu") for libtpu's v5e
and v5p topologies on this CPU host, forward and forward+backward, on one chip and inside
``jax.shard_map`` over 4 chips with the tokens sharded, and writes ``memory_analysis()`` numbers
to results/kernels/embedding_bag_tpu_compile.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import os
import pathlib
import platform
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas.timing import time_call
from kernels_pallas.embedding_bag import arg_specs, tpu
from kernels_pallas.embedding_bag.arg_specs import SPECS, ArgSpec
from kernels_pallas.embedding_bag.config import TPU_TILES

TOPOLOGIES = {"v5e": "v5e:2x2", "v5p": "v5p:2x2x1"}


def _hbm_bandwidths() -> dict[str, float]:
    """Pallas' own TPU chip table (bytes/s); empty where this jax lacks it (the GPU image's jax
    is newer than the pin, and only the TPU columns of the roofline need it)."""
    try:
        return {chip: tpu.pltpu.get_tpu_info_for_chip(v, 1).mem_bw_bytes_per_second
                for chip, v in (("v5e", tpu.pltpu.ChipVersion.TPU_V5E),
                                ("v5p", tpu.pltpu.ChipVersion.TPU_V5P))}
    except (AttributeError, TypeError):
        return {}


HBM_BW = _hbm_bandwidths()
REPORT = (pathlib.Path(__file__).resolve().parents[2]
          / "results/kernels/embedding_bag_tpu_compile.md")


# --------------------------------------------------------------------------- API closures

def diff_names(spec: ArgSpec) -> tuple[str, ...]:
    """The differentiable arguments of ``spec.op``."""
    return ("table", "x") if spec.op == "row_dot" else ("values", "weights")


def forward_fn(spec: ArgSpec, **kw):
    """f(*args in spec.shapes() order) -> output."""
    names = tuple(spec.shapes())
    return lambda *a: arg_specs.call(spec, dict(zip(names, a)), **kw)


def fwd_bwd_fn(spec: ArgSpec, psum_axis: str | None = None, **kw):
    """f(*args, ct) -> (output, grads of the differentiable args given cotangent ct). With
    ``psum_axis`` the table gradient is summed over that mesh axis (replicated table)."""
    names, dn = tuple(spec.shapes()), diff_names(spec)

    def f(*a):
        args, ct = dict(zip(names, a[:-1])), a[-1]
        out, vjp = jax.vjp(lambda *d: arg_specs.call(spec, {**args, **dict(zip(dn, d))}, **kw),
                           *(args[n] for n in dn))
        grads = vjp(ct.astype(out.dtype))
        if psum_axis is not None:
            grads = (jax.lax.psum(grads[0], psum_axis),) + tuple(grads[1:])
        return out, grads
    return f


def out_struct(spec: ArgSpec) -> jax.ShapeDtypeStruct:
    s = spec.shapes()
    return jax.eval_shape(forward_fn(spec, implementation="xla"), *s.values())


# ----------------------------------------------------------------------------- TPU AOT

@functools.lru_cache(maxsize=None)
def tpu_devices(chip: str):
    """The 4 devices of libtpu's ``TOPOLOGIES[chip]`` (needs libtpu; no TPU hardware)."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")   # shared host: no lockfile
    from jax.experimental import topologies
    return tuple(topologies.get_topology_desc(platform="tpu",
                                              topology_name=TOPOLOGIES[chip]).devices)


def aot_compile(spec: ArgSpec, chip: str, *, grad: bool, sharded: bool):
    """Lower + compile the public API for ``chip`` (one device, or shard_map over 4 with the
    leading token axis sharded and the table replicated) -> jax Compiled."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding
    devs = tpu_devices(chip)
    kw = dict(implementation="pallas_tpu", tiles=TPU_TILES[chip])
    shapes = list(spec.shapes().values())
    if grad:
        shapes.append(out_struct(spec))
    if not sharded:
        sh = SingleDeviceSharding(devs[0])
        args = [jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh) for s in shapes]
        f = fwd_bwd_fn(spec, **kw) if grad else forward_fn(spec, **kw)
        return jax.jit(f).trace(*args).lower().compile()
    mesh = Mesh(np.array(devs), ("data",))
    specs = [P()] + [P("data")] * (len(shapes) - 1)          # table replicated, tokens split
    args = [jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(mesh, p))
            for s, p in zip(shapes, specs)]
    if grad:
        body = fwd_bwd_fn(spec, psum_axis="data", **kw)
        out_specs = (P("data"), (P(), P("data")))
    else:
        body, out_specs = forward_fn(spec, **kw), P("data")
    f = jax.shard_map(body, mesh=mesh, in_specs=tuple(specs), out_specs=out_specs,
                      check_vma=False)
    return jax.jit(f).trace(*args).lower().compile()


def export_tpu(spec: ArgSpec, chip: str, *, grad: bool = False):
    """jax.export for platforms=["tpu"] with ``chip``'s tiles -> Exported (tier 2)."""
    from jax import export
    kw = dict(implementation="pallas_tpu", tiles=TPU_TILES[chip])
    shapes = list(spec.shapes().values()) + ([out_struct(spec)] if grad else [])
    f = fwd_bwd_fn(spec, **kw) if grad else forward_fn(spec, **kw)
    return export.export(jax.jit(f), platforms=["tpu"])(*shapes)


def plan_of(spec: ArgSpec, chip: str, n_tokens: int | None = None) -> tpu.Plan:
    return tpu.plan(n_tokens or spec.tokens, spec.k, spec.n_slices,
                    spec.n_groups if spec.op == "bag" else 1, spec.dim, spec.dtype,
                    TPU_TILES[chip])


def bf16_layout_probe(chip: str = "v5e", n: int = 1 << 20, d: int = 384) -> dict[str, dict]:
    """XLA's cost of handing a bf16 [n, d] table (native layout) to a single-row-DMA kernel, per
    layout: "u32_halves" (``tpu.pack_bf16_table``, what the kernels use) vs "n1d" (reshape to
    (n, 1, d) bf16). A minimal 8-row DMA kernel per layout; returns memory_analysis numbers and
    the HLO ops (copy/fusion) that touch the full table."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import tpu as pltpu
    from jax.sharding import SingleDeviceSharding
    sh = SingleDeviceSharding(tpu_devices(chip)[0])

    def probe(table):
        def kernel(idx_ref, t_hbm, o_ref, buf, sem):
            for r in range(8):
                pltpu.make_async_copy(t_hbm.at[pl.ds(idx_ref[r], 1)], buf.at[pl.ds(r, 1)],
                                      sem.at[0]).start()
            pltpu.make_async_copy(buf, buf, sem.at[0]).wait()
            x = buf[...].astype(jnp.float32)
            o_ref[...] = (x.sum(axis=1) if x.ndim == 3 else x)[:, :128]
        return pl.pallas_call(
            kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32),
            grid_spec=pltpu.PrefetchScalarGridSpec(
                num_scalar_prefetch=1, grid=(1,), in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
                out_specs=pl.BlockSpec((8, 128), lambda i, idx: (0, 0)),
                scratch_shapes=[pltpu.VMEM((8,) + table.shape[1:], table.dtype),
                                pltpu.SemaphoreType.DMA((1,))]))

    layouts = {
        "u32_halves": tpu.pack_bf16_table,
        "n1d": lambda t: t.reshape(n, 1, d),
    }
    out = {}
    for name, to_layout in layouts.items():
        def f(idx, t, to_layout=to_layout):
            tt = to_layout(t)
            return probe(tt)(idx, tt)
        c = jax.jit(f).trace(jax.ShapeDtypeStruct((8,), jnp.int32, sharding=sh),
                             jax.ShapeDtypeStruct((n, d), jnp.bfloat16, sharding=sh)
                             ).lower().compile()
        m = c.memory_analysis()
        ops = []
        for ln in c.as_text().splitlines():
            mt = re.match(r"\s*%\S+ = (\S+) (copy|fusion)\(", ln)
            if mt and f"[{n}," in mt.group(1):
                ops.append(f"{mt.group(2)} -> {mt.group(1)}")
        out[name] = dict(table_mib=n * d * 2 / 2**20, temp_mib=m.temp_size_in_bytes / 2**20,
                         ops=ops)
    return out


def _libtpu_version(mod) -> str:
    from importlib import metadata
    try:
        return metadata.version("libtpu")
    except metadata.PackageNotFoundError:
        return getattr(mod, "__version__", "?")


def compile_report(path: pathlib.Path = REPORT, specs=arg_specs.PRODUCTION) -> str:
    """Compile every (spec, chip, fwd|fwd+bwd, 1 chip|shard_map 4) and write the markdown."""
    import libtpu  # (fails fast without libtpu)
    mib = lambda b: f"{b / 2**20:.1f}"  # noqa: E731
    rows = []
    for name in specs:
        spec = SPECS[name]
        for chip in TOPOLOGIES:
            for sharded in (False, True):
                p = plan_of(spec, chip, spec.tokens // 4 if sharded else None)
                for grad in (False, True):
                    t0 = time.perf_counter()
                    try:
                        m = aot_compile(spec, chip, grad=grad, sharded=sharded).memory_analysis()
                        res = ["ok", f"{time.perf_counter() - t0:.1f}",
                               mib(m.argument_size_in_bytes), mib(m.output_size_in_bytes),
                               mib(m.temp_size_in_bytes),
                               f"{m.generated_code_size_in_bytes / 1024:.0f}"]
                    except Exception as e:  # noqa: BLE001  (recorded in the report)
                        msg = str(e).splitlines()[0][:120].replace("|", "/")
                        res = [f"FAIL: {msg}", f"{time.perf_counter() - t0:.1f}", "", "", "", ""]
                    rows.append([name, chip, "fwd+bwd" if grad else "fwd",
                                 "shard_map 4 chips" if sharded else "1 chip",
                                 f"{p.tile_tokens}x{p.k} / c={p.chunk_tokens}",
                                 mib(p.vmem_bytes())] + res)
                    print(" | ".join(rows[-1]), flush=True)
    head = ["spec", "chip", "pass", "layout", "tile tokens x K / chunk", "VMEM est MiB",
            "compile", "s", "args MiB", "out MiB", "temp MiB", "code KiB"]
    lines = [
        "# embedding_bag: TPU AOT compile (tier 3)", "",
        "Generated by `python -m kernels_pallas.embedding_bag.bench --compile-report` on "
        f"{datetime.date.today()} ({platform.node() or 'host'}, {platform.machine()}, CPU only): "
        f"jax {jax.__version__}, libtpu {_libtpu_version(libtpu)}; topologies "
        f"{', '.join(f'{c} = `{t}`' for c, t in TOPOLOGIES.items())} from "
        "`jax.experimental.topologies.get_topology_desc`. Each row lowers and compiles the public "
        "`embedding_bag` / `row_dot` with `implementation=\"pallas_tpu\"` and the chip's tiles "
        "from `config.py` (Mosaic's real compiler: VMEM, layouts, bf16 tiling). "
        "`fwd+bwd` = forward + VJP (gather-dot kernel for d_weights / d_x-by-bag, XLA "
        "scatter-add for the table). `shard_map 4 chips`: tokens sharded over 4 chips, table "
        "replicated, table gradient psum'd; numbers are per chip. Shapes are in "
        "`arg_specs.py` (T = 4096 tokens in total, N = 2^20 rows).", "",
        "memory_analysis(): args = parameters (the table dominates), temp = XLA temporaries "
        "(includes the f32 [N, Dv] table-gradient accumulator and the [T, K, Dv] scatter "
        "updates in fwd+bwd, and the uint32 packed copy of a bf16 table). The kernel's own "
        "VMEM scratch is not in these numbers; `VMEM est` is the plan's estimate. No timing: "
        "there is no TPU on this host.", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "## bf16 table layouts for single-row DMAs", "",
              "`bench.bf16_layout_probe`: a minimal 8-row DMA kernel fed a bf16 [2^20, 384] table "
              "(768 MiB) in XLA's native layout; what XLA inserts to give Mosaic the layout it "
              "needs. `u32_halves` is what the kernels use (`tpu.pack_bf16_table`); `n1d` is a "
              "(N, 1, D) bf16 reshape. The temp of `u32_halves` is the packed table with its "
              "192-word rows padded to 256 lanes.", "",
              "| chip | layout | table MiB | temp MiB | table-sized XLA ops |",
              "|---|---|---|---|---|"]
    for chip in TOPOLOGIES:
        try:
            for name, r in bf16_layout_probe(chip).items():
                lines.append(f"| {chip} | {name} | {r['table_mib']:.0f} | {r['temp_mib']:.0f} | "
                             f"{'; '.join(f'`{o}`' for o in r['ops'])} |")
        except Exception as e:  # noqa: BLE001
            lines.append(f"| {chip} | FAIL: {str(e).splitlines()[0][:120]} | | | |")
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


# ------------------------------------------------------------------------------ roofline

def memcpy_bandwidth(n_bytes: int = 256 << 20, reps: int = 5) -> float:
    """Measured host copy bandwidth in bytes/s, counting read + write (numpy copyto)."""
    src = np.ones(n_bytes // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * n_bytes / best


_time = time_call


def roofline(specs, quick: bool = True, reps: int = 3) -> list[dict]:
    """Times the forward of each spec with the default implementation of this backend."""
    from kernels_pallas.embedding_bag.api import default_implementation
    backend = jax.default_backend()
    peak = memcpy_bandwidth() if backend == "cpu" else None
    if peak is None:
        kind = jax.devices()[0].device_kind
        from kernels_pallas.embedding_bag.config import chip_of_device_kind
        peak = HBM_BW.get(chip_of_device_kind(kind) or "", float("nan"))
    out = []
    for name in specs:
        spec = SPECS[name]
        if quick:
            spec = dataclasses.replace(spec, tokens=spec.tokens // 8, n_rows=spec.n_rows // 4,
                                       lead=None)
        impl = default_implementation(spec.dtype)
        s = spec.shapes()
        table_key = next(iter(s))
        # Timing does not depend on the table's values: a cheap fill instead of N*D normals.
        args = {table_key: jnp.full(s[table_key].shape, 0.5, s[table_key].dtype)}
        args.update(spec.make(1, pad_frac=0.0, with_table=False))
        f = jax.jit(forward_fn(spec, implementation=impl))
        sec = _time(f, [args[n] for n in s], reps)
        c = spec.cost()
        out.append(dict(spec=name, impl=impl, n=spec.n_rows, tokens=spec.tokens, k=spec.k,
                        dim=spec.dim,
                        dtype=spec.dtype, mb=c["bytes"] / 1e6, gflop=c["flops"] / 1e9,
                        ms=sec * 1e3, gbs=c["bytes"] / sec / 1e9,
                        gflops=c["flops"] / sec / 1e9, frac=c["bytes"] / sec / peak,
                        peak_gbs=peak / 1e9,
                        **{f"ideal_us_{ch}": c["bytes"] / bw * 1e6 for ch, bw in HBM_BW.items()}))
        del args
    return out


def print_roofline(rows) -> None:
    backend = jax.default_backend()
    peak = rows[0]["peak_gbs"] if rows else float("nan")
    print(f"backend={backend}  timed implementation={rows[0]['impl'] if rows else '-'}  "
          f"peak={peak:.1f} GB/s " + ("(measured memcpy, read+write)" if backend == "cpu"
                                      else "(HBM spec)"))
    if backend == "cpu":
        print("CPU host: the times are the XLA reference path (gather + einsum); the Pallas TPU "
              "kernel cannot run here. ideal_us_* = bytes / HBM bandwidth (computed).")
    cols = [("spec", 22, "s"), ("impl", 5, "s"), ("n", 8, "d"), ("tokens", 6, "d"),
            ("k", 4, "d"), ("dim", 4, "d"), ("dtype", 8, "s"), ("mb", 7, ".1f"),
            ("gflop", 6, ".2f"), ("ms", 8, ".2f"), ("gbs", 6, ".2f"), ("gflops", 7, ".2f"),
            ("frac", 6, ".1%"), ("ideal_us_v5e", 12, ".1f"), ("ideal_us_v5p", 12, ".1f")]
    names = {"n": "N", "tokens": "T", "k": "K", "dim": "Dv", "mb": "MB", "gflop": "GFLOP",
             "gbs": "GB/s", "gflops": "GFLOP/s", "frac": "%peak"}
    print(" ".join(f"{names.get(c, c):>{w}s}" for c, w, _ in cols))
    for r in rows:
        print(" ".join(f"{r[c]:>{w}{f}}" for c, w, f in cols))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", default=True,
                   help="T/8 tokens and N/4 rows per spec (default)")
    g.add_argument("--full", action="store_true", help="the specs' full token counts")
    ap.add_argument("--specs", default=",".join(arg_specs.PRODUCTION))
    ap.add_argument("--compile-report", nargs="?", const=str(REPORT), default=None,
                    metavar="PATH", help="write the TPU AOT compile report instead")
    a = ap.parse_args(argv)
    specs = [s for s in a.specs.split(",") if s]
    unknown = [s for s in specs if s not in SPECS]
    if unknown:
        raise SystemExit(f"unknown specs {unknown}; known: {sorted(SPECS)}")
    if a.compile_report:
        compile_report(pathlib.Path(a.compile_report), specs)
        print(f"wrote {a.compile_report}")
        return
    print_roofline(roofline(specs, quick=not a.full))


if __name__ == "__main__":
    main()
