"""Will it fit? Per-chip memory, FLOPs and a roofline step time of a config on a slice, without
compiling (``seedjax.train.planner``; ``experiments/compile_step.py`` is the ground truth).

  python -m experiments.plan --config configs/papers/ouro.py:1.4b --topology v5p-16
  python -m experiments.plan --config configs/lm.py:small --topology v5e-8 --mesh fsdp=-1
  python -m experiments.plan --config configs/papers/ultramem_v2.py:paper_1b_moe \
      --topology h100-8 --config.data.batch_size=8

Prints per chip: parameters, optimizer state, other state (EMA, statistics), batch, the stacked
gradient of scanned blocks and the activation estimate, their total against the chip's HBM,
the model FLOPs per step, the roofline step time and MFU bound, and a suggested mesh (the
first data/fsdp/model split, least model then least fsdp, that fits in 90% of HBM).
"""
from __future__ import annotations

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("config", None, "Config file and variant; --config.<field>=<value> "
                        "overrides.")
    flags.DEFINE_string("topology", "v5e-8", "Named slice (v5e-8, v5p-16, v6e-64, h100-8, "
                        "...) or a libtpu topology such as v5e:2x2.")
    flags.DEFINE_string("mesh", None, "Mesh axes replacing config.mesh.shape, e.g. fsdp=-1.")
    flags.DEFINE_string("rules", None, "Rule preset replacing config.mesh.rules.")
    flags.DEFINE_bool("suggest", True, "Search data/fsdp/model splits for a mesh that fits.")


def main(argv):
    del argv
    from experiments.compile_step import load_target
    from seedjax.train import planner
    with cli.expected_errors():
        config, mesh = load_target(FLAGS.config, FLAGS.topology, FLAGS.mesh)
        plan = planner.plan_for(config, FLAGS.topology, mesh_shape=mesh, rules=FLAGS.rules)
    suggestion = (planner.suggest_mesh(config, FLAGS.topology, rules=FLAGS.rules)
                  if FLAGS.suggest else (None, None))
    print(planner.render(plan, suggestion))


if __name__ == "__main__":
    cli.run(main, define_flags, config_overrides=True)
