"""Where a decode step's time goes: the layers of the ``memory`` benchmark under the JAX profiler,
each compiled op's time grouped by what it does (``python -m experiments.bench decode_profile``).

For each layer and decode batch B, the jitted forward on x [B, 1, d] runs ``reps`` times inside
``jax.profiler.trace``; every profiler event whose name is an instruction of the compiled
module's entry computation is charged to that instruction, and instructions are put in classes
read from the optimised HLO:

    matmul       a dot, or an XLA:CPU library fusion (``__ynn_fusion``) around one
    top-k        the ``TopK`` custom call (``lax.top_k``)
    gather       a fusion or op that gathers (table rows, take_along_axis)
    sort         a sort
    other        elementwise, copies / transposes, reductions, small library calls

The time is the sum over the ops' events (on a CPU, ops on the two worker threads overlap, so
the sum can exceed the wall time); shares are fractions of that sum, so they compare across
layers even on a loaded machine. Each row also names its largest ops with a label: the
parameters a matmul reads (``retrieval.w_query``) or the JAX op that made the instruction.
"""
from __future__ import annotations

import collections
import glob
import os
import re
import shutil
import tempfile

CLASSES = ("matmul", "top-k", "gather", "sort", "other")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_COMP = re.compile(r"^(ENTRY )?%([\w.\-]+) ")


def _computations(hlo: str) -> tuple[dict, str]:
    """{computation name: [instruction lines]} of an HLO module's text, and the entry's name."""
    comps, entry, cur = {}, None, None
    for line in hlo.splitlines():
        m = _COMP.match(line)
        if m and line.rstrip().endswith("{"):
            cur = m.group(2)
            comps[cur] = []
            entry = cur if m.group(1) else entry
        elif cur is not None and _INSTR.match(line):
            comps[cur].append(line)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return comps, entry


def _opcode(rhs: str) -> str:
    """The opcode of an instruction's right-hand side "TYPE opcode(operands), attrs", where TYPE
    may be a tuple "( ... )" with nested parentheses and comments."""
    i = 0
    if rhs.startswith("("):
        depth = 0
        for i, ch in enumerate(rhs):
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                break
    rest = rhs[i + 1:] if rhs.startswith("(") else rhs.split(" ", 1)[-1]
    return rest.strip().split("(", 1)[0]


def _opcodes(lines) -> set:
    return {_opcode(_INSTR.match(line).group(2)) for line in lines}


def _label(rhs: str) -> str:
    """The parameters an op reads (``retrieval.w_query``), else the JAX op that made it, with the
    op's output shape (``dot_general f32[64,1872]``)."""
    params = re.findall(r"%p__([A-Za-z0-9_]+?)__(?:\.\d+)?\b", rhs)
    if params:
        what = ", ".join(dict.fromkeys(re.sub(r"_{2,}", ".", p).strip(".") for p in params))
    else:
        m = re.search(r'op_name="([^"]+)"', rhs)
        what = m.group(1).split("/")[-1] if m else ""
    shape = re.match(r"^([a-z0-9]+\[[0-9,]*\])", rhs)
    return f"{what} {shape.group(1)}".strip() if shape else what


def classify_hlo(hlo: str) -> dict:
    """{instruction name: (class, label)} for an optimised HLO module's text: the instructions
    that run as ops (those of the entry computation and of loop bodies, not the insides of
    fusions or comparators); loops and calls themselves are left out (their ops are counted)."""
    comps, entry = _computations(hlo)
    inner = {c for lines in comps.values() for line in lines
             for c in re.findall(r"(?:calls|to_apply|called_computations)=\{?%([\w.\-]+)", line)}
    out = {}
    for line in (ln for c, lines in comps.items() if c not in inner or c == entry for ln in lines):
        name, rhs = _INSTR.match(line).groups()
        op = _opcode(rhs)
        called = re.findall(r"calls=%([\w.\-]+)", rhs)
        body = set().union(*[_opcodes(comps.get(c, [])) for c in called]) if called else set()
        ops = body | {op}
        if 'custom_call_target="TopK"' in rhs:
            cls = "top-k"
        elif "sort" in ops:
            cls = "sort"
        elif "dot" in ops or "convolution" in ops:
            cls = "matmul"
        elif "gather" in ops:
            cls = "gather"
        elif op in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
                    "conditional", "call"):
            continue
        else:
            cls = "other"
        out[name] = (cls, _label(rhs))
    return out


def profile_ops(fn, args, reps: int, per_call: int = 1) -> tuple[dict, dict]:
    """Runs jitted ``fn(*args)`` ``reps`` times under the profiler. Returns ({instruction:
    microseconds per call / per_call}, classify_hlo of its compiled module)."""
    import jax
    from jax.profiler import ProfileData

    compiled = jax.jit(fn).lower(*args).compile()     # the module profiled is the one classified
    classes = classify_hlo(compiled.as_text())
    jax.block_until_ready(compiled(*args))
    trace_dir = tempfile.mkdtemp(prefix="decode_profile_")
    try:
        with jax.profiler.trace(trace_dir):
            for _ in range(reps):
                jax.block_until_ready(compiled(*args))
        files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
        if not files:
            raise RuntimeError(f"the profiler wrote no trace under {trace_dir}")
        data = ProfileData.from_file(files[0])
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    times = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                if ev.name in classes:
                    times[ev.name] += ev.duration_ns / 1e3 / reps / per_call
    return dict(times), classes


def summarize(times: dict, classes: dict, top: int = 4) -> dict:
    """{"total_us", "shares": {class: fraction}, "top": [(class, label, us), ...]}."""
    total = sum(times.values())
    by_class = collections.Counter()
    for name, us in times.items():
        by_class[classes[name][0]] += us
    ranked = sorted(times.items(), key=lambda kv: -kv[1])[:top]
    return {"total_us": round(total, 1),
            "shares": {c: round(by_class[c] / total, 3) if total else 0.0 for c in CLASSES},
            "top": [(classes[n][0], classes[n][1], round(us, 1)) for n, us in ranked]}


def bench_decode_profile(out_dir: str, *, design: dict, batches, reps: int = 10,
                         steps: int = 8, layers=("dense", "ultramem_v2", "ultramem", "moe"),
                         command: str = "") -> dict:
    """Profiles each layer of ``design`` (``design_memory_bench``) at each B, as generation runs
    it: ``steps`` decode steps in one ``lax.scan`` (``bench_memory.decode_loop``, memory
    layers prepared for decoding by ``prepared_for_decode``), ``reps`` calls; times
    are per step. Writes decode_profile.{json,md} under ``out_dir``."""
    import jax
    import jax.numpy as jnp

    from experiments.bench_common import machine, write_result
    from flax import nnx

    from experiments.bench_memory import _build_memory_models, decode_loop, prepared_for_decode
    from experiments.bench_memory_report import LABELS

    models = _build_memory_models(design, jnp.float32)
    d = design["dense"]["d_model"]
    rows = []
    for b in batches:
        xs = jax.random.normal(jax.random.key(b), (steps, b, 1, d), jnp.float32)
        for name in layers:
            graphdef, params = prepared_for_decode(*models[name])
            fn = lambda p, xs, gd=graphdef: decode_loop(nnx.merge(gd, p), xs)
            rows.append({"batch": b, "layer": name,
                         **summarize(*profile_ops(fn, (params, xs), reps, per_call=steps))})
    result = {"command": command, "machine": machine(), "d_model": d, "reps": reps,
              "steps": steps, "rows": rows}
    result["machine"]["load_avg_end"] = machine()["load_avg"]
    write_result(out_dir, "decode_profile", result, _markdown(result, LABELS))
    return result


def _markdown(r: dict, labels: dict) -> list:
    m = r["machine"]
    md = [f"# Where a memory layer's decode step goes ({m['time']})", "",
          f"Command: `{r['command']}`",
          f"Machine: {m['device_kind']} x{len(m['devices'])}, {m['cpu_count']} cores; jax "
          f"{m['versions'].get('jax')}; load average {m['load_avg'][0]} at start, "
          f"{m['load_avg_end'][0]} at end.", "",
          f"The layers of `python -m experiments.bench memory` at d = {r['d_model']} (activated "
          "FLOPs matched to the dense FFN), each as generation runs it: "
          f"{r['steps']} decode steps on x [B, 1, d] in one `lax.scan` (weight-only work "
          f"hoisted), {r['reps']} calls under `jax.profiler`; op time per step = the sum of "
          "the compiled ops' "
          "events (see `experiments/bench_profile.py` for the classes), so shares compare across "
          "layers on a loaded machine, absolute times do not.", "",
          "| B | layer | op time us | " + " | ".join(CLASSES) + " | largest ops (class: label us) |",
          "|---|---|---|" + "---|" * len(CLASSES) + "---|"]
    for row in r["rows"]:
        top = "; ".join(f"{c}: {lab or '-'} {us:,.0f}" for c, lab, us in row["top"])
        md.append(f"| {row['batch']} | {labels.get(row['layer'], row['layer'])} | "
                  f"{row['total_us']:,.0f} | "
                  + " | ".join(f"{row['shares'][c]:.0%}" for c in CLASSES) + f" | {top} |")
    return md
