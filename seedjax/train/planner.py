"""Will it fit? Per-chip bytes, FLOPs and a roofline step time of a config on a topology,
without compiling (``experiments/plan.py``; ``seedjax.train.aot`` is the ground truth).

State bytes are exact up to layout padding (TPU HBM tiles are 8 x 128 32-bit words: widths
below 128, as configs/lm.py:smoke's d 64, pad; the compiled smoke state is 1.34x ours): the
train state's abstract shapes (``seedjax.train.aot.build_step`` on an
``AbstractMesh``: params, AdamW moments, EMA, model statistics) divided by their shardings (the
config's rules). Activations are an estimate, derived from the task's forward FLOPs per token
(``seedjax.train.flops`` / ``forward_flops_per_image``), so every registered part (MoE, memory
layers, over-encoding, loops) is covered without a per-architecture formula:

* a matmul [t, d_in] x [d_in, d_out] costs 2 d_in d_out FLOPs per token; its output (what the
  backward reads) is d_out = FLOPs / (2 d_in) values. Per token, all layers' matmuls keep
  ``sum(component FLOPs) / (2 d)`` values in the compute dtype (attention projections: q, k, v
  and the attention output; SwiGLU: gate, up and their product), plus 2 d per layer (the
  two norm outputs) and d x streams per layer (the block input; hyper-connections: n streams);
* Race-DiT MoE layers: the routers select over the whole batch and the (token, expert) pairs
  form one global list, so the experts' rows count the batch's tokens, not the chip's;
* the LM MoE's "blocked" kernel: the gathered expert weights of every block and their
  gradient, for the layer whose backward runs (``moe_block_bytes``; OLMoE-7B on v5p-16:
  -31% without it, +1% with it);
* attention probabilities, float32: h T per token per layer (the scores are materialised;
  LM: attn_scores / (2 head_dim), DiT: attn_scores / (4 head_dim));
* the loss: logits and their gradient, float32, 2 V per token (per loop for looped LMs);
* hyper-connections (HC, mHC; n streams): the layer whose backward runs holds about six
  float32 [n, d] stream buffers per token (the float32 read of H, the mixed residual, the new
  state and their gradients): + 24 n d bytes per token (OLMo-1B SHC x4 on v5p-16: -27% without
  it, -20% with it; FC's state is d wide and adds nothing measurable);
* ``scan_layers``: the gradient of the stacked block parameters is one buffer the scan's
  backward fills (not fused into the update): + the scanned parameters' bytes;
* parameters that the batch axes (``data``, ``fsdp``) do not split (memory tables without a
  ``mem`` axis or split only over ``mem``, small norms) under data parallelism: their float32
  gradient shard is kept whole for the all-reduce and the forward reads a compute-dtype copy:
  + 1.75 x their per-chip bytes (measured: UltraMem-151M, tables replicated, unscanned, and
  UltraMemV2-227M, scanned, both 1.74x on v5p-16; UltraMemV2-1B, at 94.7 of 95 GiB, compiles
  tighter: XLA rematerialises near the HBM limit);
* UltraMem value rows (``memory_rows_bytes``): XLA's embedding bag gathers each unit's
  [t, heads x topk, v_dim] rows and keeps them for the backward, 6 bytes per value per unit
  plus a float32 gradient for one unit, for the tokens of every batch shard the table's
  rows are split over (``row_gather_group``; UltraMem-680M on v5p-16: -35% without it);
* ``remat`` (scanned, rematerialised blocks): only the block inputs of every layer are kept,
  plus one layer's activations while its backward runs;
* tensor parallelism divides the per-layer terms by the ``model`` axis; tokens per chip =
  batch tokens / (data x fsdp).

On TPUs XLA's memory-space assignment keeps temporaries in the chip's on-chip VMEM (128 MiB on
v5e/v6e, 64 MiB per core on v5p/v4) instead of HBM: the estimate of HBM activations is
max(0, activations - VMEM) (not for scanned blocks without remat, whose residuals are stacked
[L, ...] buffers; that combination is underestimated by about 20%, measured on configs/lm.py:small).
This term is calibrated on the v5e compiles of configs/lm.py (smoke:
temp 0; tiny: 8.8 MB of an estimated 37 MB); gradients do not appear: XLA fuses them into the
in-place optimizer update of the donated state.

Per chip total = state + batch + scanned and replicated gradient buffers + HBM activations.
Roofline step time = max(FLOPs per step / (devices x peak), HBM traffic / bandwidth) with
traffic = 2 x state (read + write) + 2 x activations (write forward, read backward);
communication is not modelled, so MFU = compute time / step time is an upper bound.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from seedjax.nn.partitioning import BATCH_AXES
from seedjax.sharding.mesh import MESH_AXES
from seedjax.sharding.rules import get_rules
from seedjax.train.hardware import Chip

MIB, GIB = 2 ** 20, 2 ** 30
STREAM_TEMPS = 6   # float32 [n, d] stream buffers of the HC layer whose backward runs
REPLICATED_COPIES = 1.75   # extra bytes per byte of a parameter the batch axes do not split
ROW_BYTES_KEPT, ROW_BYTES_GRAD = 6, 4   # per gathered value: f32 + bf16 kept; f32 gradient
VMEM = {"v5e": 128 * MIB, "v6e": 128 * MIB, "v5p": 64 * MIB, "v4": 16 * MIB}


def shard_shape(sds) -> tuple:
    """Shape of one shard of a ShapeDtypeStruct with a NamedSharding (or unsharded)."""
    sh = getattr(sds, "sharding", None)
    if sh is None:
        return tuple(sds.shape)
    spec = tuple(sh.spec) + (None,) * (len(sds.shape) - len(sh.spec))
    return tuple(dim // math.prod(sh.mesh.shape[a] for a in _entry_axes(e))
                 for dim, e in zip(sds.shape, spec))


def _entry_axes(entry) -> tuple:
    """Mesh axes of one PartitionSpec entry (None, a name or a tuple of names)."""
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def split_over(sds, axes) -> bool:
    """True if any of the mesh ``axes`` (size > 1) splits some dimension of ``sds``."""
    sh = getattr(sds, "sharding", None)
    if sh is None:
        return False
    used = {a for e in sh.spec for a in _entry_axes(e)}
    return any(a in used and sh.mesh.shape[a] > 1 for a in axes)


def shard_bytes(sds) -> int:
    """Bytes of one shard (no layout padding)."""
    return math.prod(shard_shape(sds)) * np.dtype(sds.dtype).itemsize


def tree_bytes(tree) -> int:
    return int(sum(shard_bytes(x) for x in jax.tree.leaves(tree)))


@dataclasses.dataclass
class Plan:
    """Per-chip bytes (state parts exact, activations estimated), FLOPs and a roofline."""
    topology: str
    chip: Chip
    mesh: dict
    rules: str
    n_params: int
    params: int
    opt_state: int
    other_state: int          # EMA, model statistics, step, rng
    batch: int
    activations: int          # estimate before the VMEM discount
    hbm_activations: int      # what the estimate leaves in HBM
    scan_grads: int           # gradients of scanned blocks (scan_layers: a stacked buffer)
    flops_per_step: float
    n_devices: int
    vmem: int = 0
    replicated_grads: int = 0  # gradient buffers of parameters the batch axes do not split

    @property
    def state(self) -> int:
        return self.params + self.opt_state + self.other_state

    @property
    def total(self) -> int:
        return (self.state + self.batch + self.scan_grads + self.replicated_grads
                + self.hbm_activations)

    @property
    def fits(self) -> bool:
        return self.total <= self.chip.hbm_bytes

    @property
    def compute_s(self) -> float:
        return self.flops_per_step / (self.n_devices * self.chip.peak_flops)

    @property
    def memory_s(self) -> float:
        return (2 * self.state + 2 * self.hbm_activations) / self.chip.hbm_bandwidth

    @property
    def step_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def mfu(self) -> float:
        return self.compute_s / self.step_s

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["chip"] = self.chip.name
        return {**d, "state": self.state, "total": self.total, "fits": self.fits,
                "step_s": self.step_s, "mfu": self.mfu}


def _compute_bytes(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def activation_bytes(task, mesh: dict, rules: str = "fsdp_tp") -> int:
    """The estimate of the module docstring, per chip, for an LM or DiT task."""
    c = task.model_cfg
    model_split = mesh["model"]
    cb = _compute_bytes(c.dtype)
    batch_shards = mesh["data"] * mesh["fsdp"]
    d = c.d_model
    if hasattr(c, "vocab_size"):            # LM
        from seedjax.train import flops as flops_lib
        comp = flops_lib.lm_forward_flops_per_token(c, task.seq_len)
        tokens = task.batch_size * task.seq_len / batch_shards
        hd = c.resolved_head_dim
        probs = comp.pop("attn_scores") / (2 * hd)
        head = comp.pop("head")
        loops = flops_lib._configured_loops(c)
        layers = c.n_layers * loops
        streams = int(dict(c.connection_kwargs).get("n", dict(c.connection_kwargs).get(
            "rate", 1))) if c.connection != "residual" else 1
        logits = 2 * 4 * head / (2 * d) / model_split
    else:                                   # DiT: per image
        from seedjax.models.dit import forward_flops_per_image
        comp = forward_flops_per_image(c)
        n = c.tokens
        tokens = task.batch_size * n / batch_shards
        hd = d // c.n_heads
        comp = {k: v / n for k, v in comp.items()}  # per token
        comp.pop("conditioning")
        # the routers select over the whole batch and the selected pairs are one global list
        # (static size B L k): every chip holds the expert rows of all batch shards' pairs
        comp = {k: v * (batch_shards if k.startswith("moe_experts") else 1)
                for k, v in comp.items()}
        probs = comp.pop("attn_scores") / (4 * hd)
        layers, streams = c.n_layers, 1
        logits = 2 * 4 * comp.pop("final") / (2 * d)
    body = (cb * sum(comp.values()) / (2 * d) + 4 * probs) / model_split + cb * 2 * d * layers
    resid = cb * d * streams * layers
    per_token = (resid + body / layers if c_remat(c) else resid + body) + logits
    if getattr(c, "connection", "residual") in ("hyper", "mhc"):
        per_token += STREAM_TEMPS * 4 * streams * d / model_split
    return (int(tokens * per_token) + moe_block_bytes(c, tokens, model_split)
            + memory_rows_bytes(c, tokens * row_gather_group(mesh, rules)))


def row_gather_group(mesh: dict, rules: str) -> int:
    """How many batch shards' tokens a chip gathers table rows for: XLA partitions a gather
    from rows split over a batch axis (``fsdp_tp_tables``: ("fsdp", "mem")) by visiting the
    tokens of every batch shard on that axis (masked local reads, then a reduce-scatter), so
    its gathered-row buffers grow by that axis' size (UltraMem-1.6B, v5p-32, fsdp 4: f32
    [8, 2048, 160, 1024] buffers for 2 sequences per chip). 1 when rows avoid the batch axes."""
    axes = _entry_axes(get_rules(rules).get("mem_rows"))
    return math.prod(mesh[a] for a in axes if a in BATCH_AXES)


def memory_rows_bytes(c, tokens: float) -> int:
    """UltraMem units on XLA's embedding bag: each unit gathers K = heads x topk value
    rows [t, K, v_dim] per token and keeps them for the backward (float32 rows and their
    compute-dtype copy: ROW_BYTES_KEPT per value), and the unit whose backward runs holds their
    float32 gradient (ROW_BYTES_GRAD): t K v_dim (ROW_BYTES_KEPT x units + ROW_BYTES_GRAD)
    bytes; with ``remat`` one unit's rows. 0 for other LMs and DiTs. (A TPU run's Pallas
    forward does not keep the rows; the compile on a CPU host traces the XLA path.)"""
    if getattr(c, "memory", "none") != "ultramem":
        return 0
    from seedjax.nn.memory.ultramem import UltraMemConfig
    m = UltraMemConfig(d_model=c.d_model, **dict(c.memory_kwargs))
    rows = m.heads * m.topk * m.v_dim
    units = 1 if c_remat(c) else len(c.memory_pairs)
    return int(tokens * rows * (ROW_BYTES_KEPT * units + ROW_BYTES_GRAD))


def moe_block_bytes(c, tokens: float, model_split: int) -> int:
    """The LM MoE's "blocked" kernel (``seedjax.nn.moe.experts``): the layer whose backward runs
    holds each block's expert weights gathered, [G, d, F] for the three matrices, and their
    gradient, in the compute dtype: 3 x 2 x G d F bytes, G blocks for this chip's tokens (one
    dispatch group per batch shard). 0 for other FFNs and kernels."""
    if getattr(c, "ffn", None) != "moe" or not hasattr(c, "ffn_kwargs"):   # LM MoE only
        return 0
    from seedjax.nn.moe.config import MoEConfig
    from seedjax.nn.moe.experts import block_rows, n_blocks
    m = MoEConfig(d_model=c.d_model, **dict(c.ffn_kwargs))
    if m.grouped_matmul != "blocked" or m.capacity_factor is not None:
        return 0
    a = int(tokens) * m.top_k
    g = n_blocks(a, m.n_experts, block_rows(m.block_size, a, m.n_experts))
    return int(3 * 2 * g * m.d_model * m.expert_dim * _compute_bytes(c.dtype) / model_split)


def c_remat(c) -> bool:
    return bool(getattr(c, "remat", False))


def plan_for(config, topology: str, *, mesh_shape: dict | None = None,
             rules: str | None = None) -> Plan:
    """The plan of ``config`` on a named topology (``seedjax.train.hardware.TOPOLOGIES`` or
    a libtpu name); ``mesh_shape`` / ``rules`` replace the config's."""
    from seedjax.train import aot, hardware
    name, chip, topo = hardware.resolve_topology(topology)
    n = hardware.n_devices(topology)
    program = aot.build_step(config, n, mesh_shape=mesh_shape, rules=rules, abstract_mesh=True)
    return plan_of(program, name, chip, rules or config.mesh.rules)


def plan_of(program, topology: str, chip: Chip, rules: str) -> Plan:
    """The plan of an ``aot.StepProgram`` (its mesh: a Mesh or an AbstractMesh)."""
    from seedjax.nn.params import param_metadata
    from seedjax.train.hardware import CHIPS
    mesh = {a: int(program.mesh.shape[a]) for a in MESH_AXES}
    st = program.state
    other = {k: v for k, v in st.items() if k not in ("params", "opt_state")}
    act = activation_bytes(program.task, mesh, rules)
    tpu = chip.platform == "tpu"
    gen = next((g for g, c in CHIPS.items() if c is chip), "")
    cfg = program.task.model_cfg
    scan, remat = getattr(cfg, "scan_layers", False), getattr(cfg, "remat", False)
    # scanned blocks without remat stack their residuals [L, ...]: HBM buffers, no VMEM share
    vmem = VMEM.get(gen, 0) if tpu and (remat or not scan) else 0
    scanned = replicated = 0
    if scan:
        axes = param_metadata(program.abstract, "out_sharding", ())
        scanned = int(sum(shard_bytes(x) for ax, x in zip(
            jax.tree.leaves(axes, is_leaf=lambda a: isinstance(a, tuple)),
            jax.tree.leaves(st["params"])) if "layers" in tuple(ax or ())))
    if mesh["data"] * mesh["fsdp"] > 1:   # data parallel: gradients not split over the
        replicated = int(REPLICATED_COPIES * sum(   # batch axes are all-reduced whole
            shard_bytes(x) for x in jax.tree.leaves(st["params"])
            if not split_over(x, BATCH_AXES)))
    return Plan(topology=topology, chip=chip, mesh=mesh, rules=rules,
                n_params=int(sum(math.prod(x.shape) for x in jax.tree.leaves(st["params"]))),
                params=tree_bytes(st["params"]), opt_state=tree_bytes(st["opt_state"]),
                other_state=tree_bytes(other), batch=tree_bytes(program.batch),
                activations=act, hbm_activations=max(0, act - vmem),
                scan_grads=scanned, replicated_grads=replicated,
                flops_per_step=float(program.task.flops_per_step),
                n_devices=program.n_devices, vmem=vmem)


def candidate_meshes(config, n: int, rules: str | None = None):
    """data/fsdp/model (and mem / expert when the rules map a logical axis to them) splits of
    ``n`` devices, ordered by the non-fsdp split then fsdp (the least communication first)."""
    import itertools
    used = set(get_rules(rules or config.mesh.rules).values())
    sizes = (1, 2, 4, 8)
    out = []
    for model, mem, expert in itertools.product(sizes, sizes, sizes):
        if (mem > 1 and "mem" not in used) or (expert > 1 and "expert" not in used):
            continue
        split = model * mem * expert
        if n % split:
            continue
        rest = n // split
        for fsdp in (f for f in range(1, rest + 1) if rest % f == 0):
            out.append({"data": rest // fsdp, "fsdp": fsdp, "model": model, "expert": expert,
                        "mem": mem})
    return sorted(out, key=lambda m: (m["model"] * m["mem"] * m["expert"], m["model"],
                                      m["fsdp"]))


def suggest_mesh(config, topology: str, *, rules: str | None = None,
                 headroom: float = 0.9) -> tuple[dict | None, Plan | None]:
    """The first of ``candidate_meshes`` whose plan fits in ``headroom`` x HBM (and whose
    batch and strict shardings divide), with its plan; (None, None) when none fits."""
    from seedjax.train import hardware
    n = hardware.n_devices(topology)
    for mesh in candidate_meshes(config, n, rules):
        try:
            p = plan_for(config, topology, mesh_shape=mesh, rules=rules)
        except ValueError:
            continue
        if p.total <= headroom * p.chip.hbm_bytes:
            return mesh, p
    return None, None


def fmt_bytes(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / MIB:.1f} MiB"


def render(p: Plan, suggestion: tuple[dict | None, Any] = (None, None)) -> str:
    """The planner's printout."""
    mesh_txt = ", ".join(f"{a}={s}" for a, s in p.mesh.items() if s > 1) or "1 device"
    lines = [
        f"topology {p.topology}: {p.n_devices} x {p.chip.name} ({fmt_bytes(p.chip.hbm_bytes)} "
        f"HBM, {p.chip.peak_flops / 1e12:.0f} TFLOP/s bf16, {p.chip.hbm_bandwidth / 1e9:.0f} "
        "GB/s)",
        f"mesh {mesh_txt}; rules {p.rules}; {p.n_params:,} parameters",
        "per chip:",
        f"  parameters        {fmt_bytes(p.params)}",
        f"  optimizer state   {fmt_bytes(p.opt_state)}",
        f"  other state       {fmt_bytes(p.other_state)}  (EMA, model statistics, step, rng)",
        f"  batch             {fmt_bytes(p.batch)}",
        f"  scanned grads     {fmt_bytes(p.scan_grads)}  (stacked gradient of scanned blocks)",
        f"  replicated grads  {fmt_bytes(p.replicated_grads)}  (parameters the batch axes do "
        "not split: gradient for the all-reduce, compute copy)",
        f"  activations       {fmt_bytes(p.hbm_activations)} in HBM (estimate "
        f"{fmt_bytes(p.activations)}" + (f" less {fmt_bytes(p.vmem)} VMEM)" if p.vmem else ")"),
        f"  total             {fmt_bytes(p.total)} of {fmt_bytes(p.chip.hbm_bytes)}: "
        + ("fits" if p.fits else "DOES NOT FIT"),
        f"FLOPs per step      {p.flops_per_step:.3e} (model FLOPs, 3 x forward)",
        f"roofline step time  {p.step_s * 1e3:.1f} ms (compute {p.compute_s * 1e3:.1f} ms, "
        f"HBM {p.memory_s * 1e3:.1f} ms); MFU <= {p.mfu:.0%} (communication not modelled)",
    ]
    mesh, sp = suggestion
    if mesh is not None:
        lines.append("suggested mesh      " + ", ".join(f"{a}={s}" for a, s in mesh.items())
                     + f": {fmt_bytes(sp.total)} per chip")
    elif suggestion != (None, None) or not p.fits:
        lines.append("suggested mesh      none of data/fsdp/model fits: a bigger topology")
    return "\n".join(lines)
