"""Does the whole train step compile for a TPU slice, and how much HBM does each chip need?

  python -m experiments.compile_step --config configs/papers/ultramem_v2.py:paper_227m_v2 \
      --topology v5p-16 [--mesh fsdp=-1] [--rules fsdp_tp] [--json out.json] [--cuda]
  python -m experiments.compile_step --config configs/lm.py:small --topology h100-8
  python -m experiments.compile_step --table results/compile/train_steps   # json dir -> .md

TPU topologies (``seedjax.train.hardware.TOPOLOGIES``: v5e-8, v5p-16/64/128, v6e-8/64, v4-8,
... or a libtpu name such as v5e:2x2): the jitted step (forward, backward, AdamW update,
the state donated as in the trainer) is traced on ShapeDtypeStructs carrying the config's
shardings (``seedjax.train.aot``), compiled by libtpu on this host, and the per-chip
``memory_analysis()`` is printed: argument / output / alias / temp bytes, total = argument +
output - alias + temp, fits (total <= the chip's HBM), the collectives of the optimized HLO and
the lower / compile wall times, with the planner's estimate (``experiments/plan.py``) beside it.
``--cuda`` (and GPU topologies, e.g. h100-8, on fake CPU devices) lowers the same step with
``jax.export`` for platforms=["cuda"]: a CPU host cannot compile for CUDA, so the per-device
memory is the planner's estimate.

``--json``: write the result (one file per config: run them one at a time in the background and
render the table from what finished with ``--table <dir>``, which writes ``<dir>.md``).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from absl import flags

from experiments import cli
from experiments.compile_check import package_versions

FLAGS = flags.FLAGS
COMMAND = "python -m experiments.compile_step"


def define_flags() -> None:
    flags.DEFINE_string("config", None, "Config file and variant, e.g. configs/lm.py:smoke; "
                        "override fields with --config.<section>.<field>=<value>.")
    flags.DEFINE_string("topology", "v5e-8", "Named slice (v5e-8, v5p-16, ..., h100-8) or a "
                        "libtpu topology such as v5e:2x2.")
    flags.DEFINE_string("mesh", None, "Mesh axes replacing config.mesh.shape, e.g. "
                        "fsdp=-1,model=2 (unnamed axes 1).")
    flags.DEFINE_string("rules", None, "Rule preset replacing config.mesh.rules.")
    flags.DEFINE_bool("cuda", False, "Also jax.export the step for platforms=['cuda'].")
    flags.DEFINE_string("json", None, "Write the result here (JSON).")
    flags.DEFINE_string("table", None, "Render <dir>/*.json into <dir>.md and exit.")
    flags.DEFINE_bool("replan", False, "With --table: first redo every row's planner estimate "
                      "with the current planner (abstract shapes from the row's own command, "
                      "no compile) and store it in the row's JSON.")


def load_target(config_spec: str | None, topology: str, mesh_text: str | None):
    """(config with the command line's --config.* overrides, mesh dict or None) of a compile or
    plan command; ValueError for a missing --config, an unknown topology or a bad --mesh."""
    from experiments.cli import CONFIG_OVERRIDES
    from experiments.overrides import load_config
    from seedjax.train import hardware
    if not config_spec:
        raise ValueError("--config is required (e.g. configs/lm.py:smoke)")
    hardware.resolve_topology(topology)
    mesh = parse_mesh(mesh_text)
    return load_config(config_spec, CONFIG_OVERRIDES), mesh


def parse_mesh(text: str | None) -> dict | None:
    """"fsdp=-1,model=2" -> {"fsdp": -1, "model": 2} (other axes 1); ValueError otherwise."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        name, _, size = part.partition("=")
        try:
            out[name.strip()] = int(size)
        except ValueError:
            raise ValueError(f"--mesh={text!r}: expected axis=size pairs such as "
                             "fsdp=-1,model=2") from None
    return out


def run_one(config, topology: str, mesh: dict | None, rules: str | None, cuda: bool) -> dict:
    """Compile (TPU) or export (GPU) the step of ``config``; the result dict."""
    import jax
    from seedjax.train import aot, hardware, planner
    name, chip, topo = hardware.resolve_topology(topology)
    n = hardware.n_devices(topology)
    if topo is None:
        devices = jax.devices("cpu")
        if len(devices) < n:
            raise ValueError(f"--topology={topology} needs {n} fake CPU devices; run with "
                             f"XLA_FLAGS=--xla_force_host_platform_device_count={n}")
        devices = devices[:n]
    else:
        devices = aot.tpu_devices(topo)
    program = aot.build_step(config, devices, mesh_shape=mesh, rules=rules)
    plan = planner.plan_of(program, name, chip, rules or config.mesh.rules)
    out = {"config_name": str(config.get("name", "")), "topology": name,
           "libtpu_topology": topo, "chip": chip.name, "mesh": plan.mesh, "rules": plan.rules,
           "n_params": plan.n_params, "plan": plan.to_dict()}
    if topo is not None:
        report, _ = aot.compile_step(program, chip)
        out["compiled"] = report.to_dict()
    if cuda or topo is None:
        t0 = time.perf_counter()
        exported = aot.export_step(program, "cuda")
        out["cuda_export"] = {"platforms": list(exported.platforms),
                              "nr_devices": exported.nr_devices,
                              "export_s": time.perf_counter() - t0,
                              "mlir_chars": len(exported.mlir_module())}
    return out


def render_result(r: dict) -> str:
    from seedjax.train.planner import fmt_bytes
    p = r["plan"]
    lines = [f"{r['config_name']} on {r['topology']} ({r['chip']}), mesh "
             + ", ".join(f"{a}={s}" for a, s in r["mesh"].items() if s > 1)
             + f", rules {r['rules']}, {r['n_params']:,} parameters"]
    if "compiled" in r:
        c = r["compiled"]
        lines += [
            f"compiled per chip: argument {fmt_bytes(c['argument'])}, output "
            f"{fmt_bytes(c['output'])}, alias {fmt_bytes(c['alias'])}, temp "
            f"{fmt_bytes(c['temp'])}; total {fmt_bytes(c['total'])} of {fmt_bytes(c['hbm'])} "
            f"HBM: {'fits' if c['fits'] else 'DOES NOT FIT'}",
            "collectives: " + (", ".join(f"{k} {v}" for k, v in c["collectives"].items() if v)
                               or "none"),
            f"lower {c['lower_s']:.1f} s, compile {c['compile_s']:.1f} s",
            f"planner estimate {fmt_bytes(p['total'])} ({p['total'] / c['total'] - 1:+.0%} vs "
            "compiled)"]
    else:
        lines.append(f"planner estimate per device {fmt_bytes(p['total'])}: "
                     + ("fits" if p["fits"] else "DOES NOT FIT"))
    if "cuda_export" in r:
        e = r["cuda_export"]
        lines.append(f"jax.export for cuda: {e['nr_devices']} devices, {e['mlir_chars']:,} "
                     f"chars of StableHLO, {e['export_s']:.1f} s (memory: the planner's "
                     f"{fmt_bytes(p['total'])} per device)")
    return "\n".join(lines)


def render_table(directory: str) -> str:
    """Markdown of every <directory>/*.json (compiled rows and "not compiled" rows)."""
    from seedjax.train.planner import fmt_bytes
    rows = [json.loads(p.read_text()) for p in sorted(Path(directory).glob("*.json"))]
    lines = [
        "# Whole train steps of the paper-scale configs: TPU AOT compile", "",
        f"Regenerate one row: `{COMMAND} --config <file>:<variant> --topology <slice> "
        f"--mesh <axes> --json {directory}/<name>.json`; the table: `{COMMAND} --table "
        f"{directory}`. Rows were compiled one at a time in the background on a shared "
        "2-core CPU host (libtpu compile-only topologies: nothing ran on a TPU).", "",
        f"Versions: {package_versions()}. Table and planner column (`--replan`) rendered at "
        f"commit {_commit()}; each row's JSON holds the command that compiled it.", "",
        "Per chip, from `compiled.memory_analysis()`: argument (state + batch), output (new "
        "state + metrics), alias (the donated state), temp; total = argument + output - alias "
        "+ temp. Planner = `experiments/plan.py`'s estimate for the same mesh (no compile). "
        "Parameter counts: ours and the paper's in `results/compile/paper_params.md`.", "",
        "| config | topology | mesh | rules | params | argument | output | alias | temp | "
        "total / chip | HBM / chip | fits | planner | collectives | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mesh = ", ".join(f"{a}={s}" for a, s in r.get("mesh", {}).items() if s > 1) or "-"
        if "compiled" not in r:
            lines.append(f"| {r['config']} | {r['topology']} | {mesh} | {r.get('rules', '-')} | "
                         f"{r.get('n_params', 0):,} | not compiled ({r['reason']}) "
                         "| | | | | | | " + (fmt_bytes(r["plan"]["total"]) if "plan" in r else "-")
                         + " | | |")
            continue
        c, p = r["compiled"], r["plan"]
        col = ", ".join(f"{k} {v}" for k, v in c["collectives"].items() if v) or "none"
        lines.append(
            f"| {r['config']} | {r['topology']} | {mesh} | {r['rules']} | {r['n_params']:,} | "
            f"{fmt_bytes(c['argument'])} | {fmt_bytes(c['output'])} | {fmt_bytes(c['alias'])} | "
            f"{fmt_bytes(c['temp'])} | {fmt_bytes(c['total'])} | {fmt_bytes(c['hbm'])} | "
            f"{'yes' if c['fits'] else 'NO'} | {fmt_bytes(p['total'])} "
            f"({p['total'] / c['total'] - 1:+.0%}) | {col} | {c['compile_s']:.0f} |")
    return "\n".join(lines) + "\n"


def command_target(command: str):
    """(config, topology, mesh dict or None, rules or None) rebuilt from a row's recorded
    ``python -m experiments.compile_step ...`` command line."""
    import shlex
    from experiments.overrides import load_config, split_config_args
    argv, overrides = split_config_args(shlex.split(command)[2:])
    opts = {}
    for arg in argv[1:]:
        key, _, value = arg.lstrip("-").partition("=")
        opts[key] = value
    return (load_config(opts["config"], overrides), opts["topology"],
            parse_mesh(opts.get("mesh")), opts.get("rules") or None)


def replan_rows(directory: str) -> int:
    """Recompute ``plan`` (``seedjax.train.planner.plan_for``) of every compiled row of
    ``directory`` from its command; returns how many rows were updated."""
    from seedjax.train import planner
    done, commit = 0, _commit()
    for path in sorted(Path(directory).glob("*.json")):
        r = json.loads(path.read_text())
        if "compiled" not in r or "command" not in r:
            continue
        config, topology, mesh, rules = command_target(r["command"])
        r["plan"] = planner.plan_for(config, topology, mesh_shape=mesh, rules=rules).to_dict()
        r["plan_commit"] = commit
        path.write_text(json.dumps(r, indent=1, default=str))
        done += 1
        print(f"replanned {path.name}: {planner.fmt_bytes(r['plan']['total'])} vs compiled "
              f"{planner.fmt_bytes(r['compiled']['total'])}", flush=True)
    return done


def _commit() -> str:
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv):
    del argv
    if FLAGS.table:
        with cli.expected_errors():
            if not Path(FLAGS.table).is_dir():
                raise ValueError(f"--table={FLAGS.table!r} is not a directory of results")
        if FLAGS.replan:
            replan_rows(FLAGS.table)
        out = f"{FLAGS.table.rstrip('/')}.md"
        Path(out).write_text(render_table(FLAGS.table))
        print(f"wrote {out}")
        return
    from seedjax.train import hardware
    with cli.expected_errors():
        config, mesh = load_target(FLAGS.config, FLAGS.topology, FLAGS.mesh)
        from seedjax.sharding.mesh import resolve_mesh_shape
        from seedjax.sharding.rules import get_rules
        resolve_mesh_shape(mesh if mesh is not None else dict(config.mesh.shape),
                           hardware.n_devices(FLAGS.topology))
        if FLAGS.rules:
            get_rules(FLAGS.rules)
    t0 = time.perf_counter()
    with cli.expected_errors():  # sharding / batch divisibility found while building
        result = run_one(config, FLAGS.topology, mesh, FLAGS.rules, FLAGS.cuda)
    result.update(config=FLAGS.config, command=" ".join(["python -m experiments.compile_step",
                                                           *sys.argv[1:]]),
                  wall_s=time.perf_counter() - t0, versions=package_versions())
    print(render_result(result))
    if FLAGS.json:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
        Path(FLAGS.json).write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
    cli.run(main, define_flags, config_overrides=True)
