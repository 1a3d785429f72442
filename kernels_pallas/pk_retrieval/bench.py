"""Roofline-style benchmark and TPU compile report for product-key retrieval.

    python -m kernels_pallas.pk_retrieval.bench                   # --quick (default): < 2 min
    python -m kernels_pallas.pk_retrieval.bench --full            # production token counts
    python -m kernels_pallas.pk_retrieval.bench \
        --compile-report results/kernels/pk_retrieval_tpu_compile.md

Per production spec (arg_specs.py) the table gives, from shapes: MXU FLOPs of the side scoring
(2 sides x 2*T*H*n*d for PKM, 2 sides x r x 2*T*H*n*Dk for TDQKR) plus the candidate grid
(TDQKR: 2 * T*H*k_s^2 * h_c * r * (r + 1)); the extraction work of the kernel's iterative
top-k in VPU element-ops (about 6 per row per step, + 2 per carried payload, see tpu.py);
HBM bytes (queries, keys, outputs). Then the measured time, achieved GFLOP/s and GB/s and the
fraction of peak. On a CPU host it times the XLA reference (the Pallas kernels only run in
interpret mode there, which measures the interpreter, not the kernel) against the CPU matmul /
copy peaks measured at start-up; on a TPU it times the Mosaic kernel against the chip's
datasheet peaks.

``--compile-report`` AOT-compiles the kernels with libtpu for v5e, v5p and v6e topologies on this
host (single device, and inside ``jax.shard_map`` over 4 chips with tokens sharded) and writes
``memory_analysis()`` to a markdown page.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.util
import os
import platform
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas.timing import time_call
from kernels_pallas.pk_retrieval import api, arg_specs, config, tpu

TOPOLOGIES = {"v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
# Datasheet peaks per chip: (bf16 TFLOP/s, HBM GB/s).
TPU_PEAKS = {"v5e": (197.0, 819.0), "v5p": (459.0, 2765.0), "v6e": (918.0, 1640.0)}


def _is_pk(spec) -> bool:
    return isinstance(spec, arg_specs.PKSpec)


def cost_model(spec) -> dict:
    """FLOPs, extraction element-ops and HBM bytes of one call, from shapes only."""
    t, h, n, ks, k = spec.tokens, spec.heads, spec.n, spec.topk_side, spec.topk
    item = jnp.dtype(spec.dtype).itemsize
    side_rows = tpu.row_chunks(n, 512)[1]
    if _is_pk(spec):
        d = spec.half_dim
        flops = 2 * 2 * t * h * n * d
        cand = tpu.pk_candidate_blocks(ks, k)[1]
        extract = t * h * (6 * 2 * ks * side_rows + 8 * k * cand)
        nbytes = item * 2 * (t * h * d + h * n * d) + 8 * t * h * k
    else:
        r, dk, hc = spec.rank, spec.dk, spec.n_cores
        flops = 2 * r * 2 * t * h * n * dk + 2 * t * h * ks * ks * hc * r * (r + 1)
        grid_rows = tpu.row_chunks(ks * (-(-ks // 8) * 8), 512)[1]
        extract = t * h * (2 * ks * side_rows * (6 + 2 * r) + 6 * k * grid_rows)
        nbytes = item * 2 * r * dk * (t * h + h * n) + 4 * t * h * k * (hc + 1)
    return dict(flops=flops, extract_ops=extract, bytes=nbytes)


def _cpu_peaks() -> tuple[float, float]:
    """Measured f32 matmul GFLOP/s (2048^2) and copy GB/s (64 MiB read + write) on this host."""
    a = jnp.ones((2048, 2048), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    cp = jax.jit(lambda x: x * 2.0)
    x = jnp.ones((16 * 2**20,), jnp.float32)
    t_mm = _time(mm, (a,), reps=5, best=True)
    t_cp = _time(cp, (x,), reps=5, best=True)
    return 2 * 2048 ** 3 / t_mm / 1e9, 2 * x.nbytes / t_cp / 1e9


_time = time_call


def _call(spec, impl):
    if _is_pk(spec):
        return jax.jit(lambda *a: api.product_key_topk(*a, **spec.kwargs(), implementation=impl))
    return jax.jit(lambda *a: api.tucker_topk(*a, **spec.kwargs(), implementation=impl))


def run_table(quick: bool = True) -> str:
    backend = jax.default_backend()
    impl = "pallas_tpu" if backend == "tpu" else "xla"
    if backend == "tpu":
        chip = config.chip_name(jax.devices()[0].device_kind)
        peak_tf, peak_bw = TPU_PEAKS.get(chip, TPU_PEAKS["v5p"])
        peak_f, peak_b = peak_tf * 1e3, peak_bw
        peak_note = f"{chip} datasheet: {peak_tf:.0f} TFLOP/s bf16, {peak_bw:.0f} GB/s HBM"
    else:
        peak_f, peak_b = _cpu_peaks()
        peak_note = (f"{backend} measured on this host: {peak_f:.0f} GFLOP/s f32 matmul, "
                     f"{peak_b:.1f} GB/s copy")
    lines = [f"backend={backend} implementation={impl} ({peak_note})",
             "NOTE: on cpu this times the XLA reference, not the Pallas kernel." if impl == "xla"
             else "", "",
             "| spec | T | GFLOP | extract Gop | MB | ms | GFLOP/s | GB/s | %peak FLOP "
             "| %peak BW |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for spec in arg_specs.PRODUCTION_PK + arg_specs.PRODUCTION_TUCKER:
        if quick and backend != "tpu":
            spec = dataclasses.replace(spec, lead=(min(spec.tokens, 512),))
        cm = cost_model(spec)
        t = _time(_call(spec, impl), spec.make(0), reps=3 if quick else 5)
        gf, gb = cm["flops"] / t / 1e9, cm["bytes"] / t / 1e9
        lines.append(f"| {spec.name} | {spec.tokens} | {cm['flops'] / 1e9:.2f} | "
                     f"{cm['extract_ops'] / 1e9:.2f} | {cm['bytes'] / 1e6:.1f} | {t * 1e3:.1f} | "
                     f"{gf:.1f} | {gb:.2f} | {100 * gf / peak_f:.1f}% | {100 * gb / peak_b:.2f}% |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


# -------------------------------------------------------------------------- TPU compile report

def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def _forward(spec, tiles):
    if _is_pk(spec):
        return lambda q1, q2, k1, k2: tpu.product_key_topk_tpu(q1, q2, k1, k2, **spec.kwargs(),
                                                               tiles=tiles)
    return lambda qr, qc, kr, kc, c, u, t: tpu.tucker_topk_tpu(qr, qc, kr, kc, c, u, t,
                                                               **spec.kwargs(), tiles=tiles)


def _shapes(spec):
    if _is_pk(spec):
        return spec.shapes()
    vec = jax.ShapeDtypeStruct((spec.heads, spec.rank), jnp.float32)
    return (*spec.shapes(), vec, vec)


@functools.lru_cache(maxsize=None)
def _topology_devices(chip: str):
    # A compile-only libtpu client takes /tmp/libtpu_lockfile like a real TPU process; let
    # concurrent compile checks on a shared CPU host coexist (no TPU is driven here).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies
    return topologies.get_topology_desc(platform="tpu", topology_name=TOPOLOGIES[chip]).devices


def compile_tpu(spec, chip: str, sharded: bool, tiles=None):
    """AOT-compiles the Mosaic forward of ``spec`` for ``chip`` with libtpu on this host:
    one device, or ``jax.shard_map`` over the topology's 4 chips with tokens sharded (the spec's
    T is per chip, so the global T is 4x). Returns the ``Compiled`` object."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    devices = _topology_devices(chip)
    fwd = _forward(spec, tiles or config.TPU_TILES[chip])
    shapes = _shapes(spec)
    if not sharded:
        mesh = Mesh(np.array(devices[:1]), ("x",))
        args = [jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(mesh, P()))
                for s in shapes]
        return jax.jit(fwd).trace(*args).lower().compile()
    mesh = Mesh(np.array(devices[:4]), ("data",))
    n_q = 2
    specs = [P("data") if i < n_q else P() for i in range(len(shapes))]
    args = []
    for i, s in enumerate(shapes):
        shape = ((s.shape[0] * 4,) + s.shape[1:]) if i < n_q else s.shape
        args.append(jax.ShapeDtypeStruct(shape, s.dtype, sharding=NamedSharding(mesh, specs[i])))
    out_spec = (P("data"), P("data"))
    f = jax.shard_map(fwd, mesh=mesh, in_specs=tuple(specs), out_specs=out_spec, check_vma=False)
    return jax.jit(f).trace(*args).lower().compile()


def scoped_vmem_mib(spec, chip: str) -> float | None:
    """The kernel's scoped VMEM allocation as the compiler reports it: compile once with a
    64 KiB limit and read "Scoped allocation with size X" from the RESOURCE_EXHAUSTED error."""
    tiles = dataclasses.replace(config.TPU_TILES[chip], vmem_limit_bytes=64 * 2**10)
    try:
        compile_tpu(spec, chip, False, tiles=tiles)
    except Exception as e:                                    # noqa: BLE001
        m = re.search(r"Scoped allocation with size ([0-9.]+)([KMG])", str(e))
        if m:
            return float(m.group(1)) * {"K": 2**-10, "M": 1.0, "G": 2**10}[m.group(2)]
    return None


def compile_report(path: str | None, specs=None, chips=("v5e", "v5p", "v6e")) -> str:
    """Compiles every (spec, chip, single / 4-chip shard_map) and renders a markdown page;
    writes it to ``path`` when given."""
    specs = specs or (arg_specs.PRODUCTION_PK + arg_specs.PRODUCTION_TUCKER)
    rows = []
    for chip in chips:
        for spec in specs:
            vmem = None
            for sharded in (False, True):
                t0 = time.perf_counter()
                try:
                    m = compile_tpu(spec, chip, sharded).memory_analysis()
                    status = "compiles"
                    mem = (m.argument_size_in_bytes, m.output_size_in_bytes,
                           m.temp_size_in_bytes, m.generated_code_size_in_bytes)
                except Exception as e:                        # noqa: BLE001 (reported in the table)
                    status, mem = f"FAILS: {str(e).splitlines()[0][:120]}", None
                secs = time.perf_counter() - t0
                vmem = vmem if sharded else scoped_vmem_mib(spec, chip)
                cells = [f"{x / 2**20:.2f}" for x in mem] if mem else ["-"] * 4
                mode = "shard_map 4 chips (tokens sharded)" if sharded else "1 chip"
                vm = "-" if vmem is None else f"{vmem:.2f}"
                rows.append(f"| {chip} | {spec.name} | {spec.dtype} | {spec.tokens} | {mode} | "
                            f"{status} | {vm} | {' | '.join(cells)} | {secs:.1f} |")
                print(rows[-1], flush=True)
    import jaxlib
    libtpu_version = "n/a"
    if libtpu_available():
        from importlib import metadata
        libtpu_version = metadata.version("libtpu")
    tiles = ", ".join(f"{c}: token_tile={t.token_tile}, chunk_rows={t.chunk_rows}, "
                      f"vmem_limit={t.vmem_limit_bytes // 2**20} MiB"
                      for c, t in config.TPU_TILES.items() if c in chips)
    page = "\n".join([
        "# pk_retrieval: TPU AOT compile (libtpu on a CPU host)",
        "",
        "Generated by `python -m kernels_pallas.pk_retrieval.bench --compile-report "
        "results/kernels/pk_retrieval_tpu_compile.md` (do not edit by hand).",
        f"Date {datetime.date.today()}; jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
        f"libtpu {libtpu_version}; host {platform.machine()} {platform.system()}, "
        "no TPU attached (topologies from `jax.experimental.topologies.get_topology_desc`).",
        "",
        f"Tiles (config.py): {tiles}. T is tokens per chip; the sharded rows compile the "
        "forward kernel inside `jax.shard_map` over a 4-chip mesh with 4x T global tokens "
        "sharded and keys/cores replicated.",
        "",
        "Memory columns are XLA's `memory_analysis()` of the whole jitted program in MiB "
        "(per device): argument, output, temp and generated code. On v5p temp adds up to the "
        "wrapper's head-major (transposed, padded) copies of queries and keys plus the "
        "kernel's head-major outputs before their final transpose; v5e and v6e report temp 0 "
        "for the same programs (not investigated). The kernel's VMEM scratch is "
        "not part of "
        "these numbers; Mosaic rejects a kernel whose VMEM exceeds `vmem_limit_bytes`, so "
        "'compiles' also means it fits. 'scoped VMEM' is the kernel's scoped VMEM allocation "
        "as the compiler reports it (`bench.scoped_vmem_mib`: compile with a 64 KiB limit and "
        "read the size from the RESOURCE_EXHAUSTED message); it equals the sum of the kernel's "
        "scratch buffers (for the TDQKR rows mostly the k_s x ceil8(k_s) x 128 f32 candidate "
        "grid) and does not include the pipelined input/output blocks. It is the per-chip "
        "kernel, so the same in both modes.",
        "",
        "| chip | spec | dtype | T/chip | mode | status | scoped VMEM MiB | arg MiB | out MiB | "
        "temp MiB | code MiB | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows, ""])
    if path:
        import pathlib
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(path).write_text(page)
    return page


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", default=True,
                   help="CPU: 512 tokens per spec (default)")
    p.add_argument("--full", action="store_true", help="production token counts")
    p.add_argument("--compile-report", metavar="PATH", default=None,
                   help="AOT-compile for v5e/v5p/v6e with libtpu and write the markdown page")
    a = p.parse_args(argv)
    if a.compile_report:
        if not libtpu_available():
            sys.exit("libtpu is not installed: pip install 'jax[tpu]==<jax version>'")
        compile_report(a.compile_report)
        return
    run_table(quick=not a.full)


if __name__ == "__main__":
    main()
