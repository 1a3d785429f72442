"""Compile the train step of every paper-scale config (``configs/papers/*.py``, ``paper_*``)
for a TPU slice big enough to hold it, one at a time, one JSON per config (resumable), then
render ``results/compile/train_steps.md``.

  nohup python -m experiments.compile_papers --out results/compile/train_steps \
      [--only ouro,race_dit] [--timeout_s 1800] &

Per config: the smallest of --topologies whose plan (``seedjax.train.planner``, mesh
fsdp=-1: every chip holds 1/n of the state; for configs with memory or n-gram tables, if that
does not fit, fsdp=n/4 x mem=4 with the fsdp_tp_mem rules, then with fsdp_tp_tables) fits the
chip's HBM; LMs train one sequence per chip (data.batch_size = chips), Race-DiT its configured
256 images. Each compile
runs ``experiments.compile_step`` in a subprocess with a time limit; a config that does not fit
the largest slice, fails or runs out of time gets a "not compiled (reason)" row. Existing JSON
files are skipped (delete one to redo it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("out", "results/compile/train_steps", "Directory of JSON results; "
                        "the table goes to <out>.md.")
    flags.DEFINE_list("only", [], "Papers to run (default all of experiments.paper_params).")
    flags.DEFINE_list("topologies", ["v5p-16", "v5p-64", "v5p-128"], "Candidate slices, "
                      "smallest first.")
    flags.DEFINE_integer("timeout_s", 1800, "Time limit per compile.")


def paper_variants(papers) -> list[str]:
    """``configs/papers/<paper>.py:<variant>`` of every paper-scale variant, round-robin over
    the papers (each paper's first variant first, so a partial run covers every paper)."""
    import importlib
    import itertools
    out = []
    for paper in papers:
        mod = importlib.import_module(f"configs.papers.{paper}")
        keys = list(mod.PAPER_PARAMS)
        if paper == "ouro":
            keys = [k if k.startswith("paper_") else f"paper_{k}" for k in keys]
            keys = [k for k in keys if _loads(mod, k)] or list(mod.PAPER_PARAMS)
        if paper == "race_dit":
            keys = [f"paper_{k}" for k in keys]
        out.append([f"configs/papers/{paper}.py:{k}" for k in keys])
    return [s for group in itertools.zip_longest(*out) for s in group if s]


def _loads(mod, variant) -> bool:
    try:
        mod.get_config(variant)
        return True
    except ValueError:
        return False


MEM_SPLIT = 4   # chips a memory / n-gram table is split over when fsdp alone does not fit


def has_tables(config) -> bool:
    """True for configs with row tables the ``mem`` axis can split (memory layers, PKM-like
    FFNs, over-encoding)."""
    m = config.model
    return (m.get("memory", "none") != "none" or m.get("ffn") in ("pkm", "peer", "memory_plus")
            or m.get("embed") == "over_encoding")


def meshes(config, n: int) -> list[tuple[dict, str | None]]:
    """Candidate (mesh, rules) on n chips: fsdp over all chips with the config's rules; for
    configs with tables also ``MEM_SPLIT`` chips of ``mem``, the tables split over ``mem``
    (rules fsdp_tp_mem), then over ``fsdp`` x ``mem`` (fsdp_tp_tables: UltraMem-1.6B)."""
    out = [({"fsdp": -1}, None)]
    if has_tables(config) and n % MEM_SPLIT == 0 and n > MEM_SPLIT:
        out += [({"fsdp": n // MEM_SPLIT, "mem": MEM_SPLIT}, rules)
                for rules in ("fsdp_tp_mem", "fsdp_tp_tables")]
    return out


def choose(spec: str, topologies):
    """(topology, mesh, rules, config overrides, the plan's dict) of the smallest slice (and
    on it the first of ``meshes``) that the planner says fits."""
    from experiments.overrides import load_config
    from seedjax.train import hardware, planner
    last = None
    for topo in topologies:
        n = hardware.n_devices(topo)
        config = load_config(spec, [])
        overrides = []
        if config.get("task", "lm") == "lm":
            config.data.batch_size = n
            overrides = [f"--config.data.batch_size={n}"]
        for mesh, rules in meshes(config, n):
            try:
                plan = planner.plan_for(config, topo, mesh_shape=mesh, rules=rules)
            except ValueError as e:
                last = {"error": str(e)}
                continue
            last = plan.to_dict()
            if plan.fits:
                return topo, mesh, rules, overrides, last
    return None, None, None, [], last


def main(argv):
    del argv
    from experiments.paper_params import PAPERS
    with cli.expected_errors():
        unknown = sorted(set(FLAGS.only) - set(PAPERS))
        if unknown:
            raise ValueError(f"--only: {unknown} unknown; allowed: {', '.join(PAPERS)}")
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    for spec in paper_variants(FLAGS.only or PAPERS):
        name = spec.split("/")[-1].replace(".py:", "__")
        path = out / f"{name}.json"
        if path.exists():
            continue
        topo, mesh, rules, overrides, plan = choose(spec, FLAGS.topologies)
        row = {"config": spec, "plan": plan}
        if topo is None:
            reason = (f"planner: does not fit {FLAGS.topologies[-1]} with any mesh of `meshes`"
                      if plan and "total" in plan else f"plan failed: {plan}")
            path.write_text(json.dumps({**row, "topology": FLAGS.topologies[-1],
                                        "reason": reason}, indent=1))
            continue
        mesh_text = ",".join(f"{a}={v}" for a, v in mesh.items())
        cmd = [sys.executable, "-m", "experiments.compile_step", f"--config={spec}",
               f"--topology={topo}", f"--mesh={mesh_text}", f"--json={path}",
               *([f"--rules={rules}"] if rules else []), *overrides]
        print(" ".join(cmd[1:]), flush=True)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=FLAGS.timeout_s,
                                  env={**os.environ, "JAX_PLATFORMS": "cpu"})
            ok, err = proc.returncode == 0, proc.stderr.strip().splitlines()[-1:] or [""]
        except subprocess.TimeoutExpired:
            ok, err = False, [f"compile ran past {FLAGS.timeout_s} s on this host"]
        if not ok or not path.exists():
            path.write_text(json.dumps({**row, "topology": topo, "mesh": plan.get("mesh", {}),
                                        "rules": plan.get("rules"),
                                        "n_params": plan.get("n_params", 0),
                                        "reason": err[0][:300]}, indent=1))
        print(f"{spec}: {'compiled' if ok else 'not compiled: ' + err[0][:200]}", flush=True)
    from experiments.compile_step import render_table
    Path(f"{str(out).rstrip('/')}.md").write_text(render_table(str(out)))
    print(f"wrote {out}.md")


if __name__ == "__main__":
    cli.run(main, define_flags)
