"""Memory-layer cost model tables (pure arithmetic; see seedjax/train/memory_cost.py).

  python -m experiments.cost_model --preset v2_table4     # V2 Table 4 MCP: ours vs the paper
  python -m experiments.cost_model --preset worked_227m   # spec §6.2: 227M/1.2B FFN+memory cost

``v2_table4``: MCP = UltraMemV2 layer FLOPs / a fitted 56.9 MFLOP per layer-equivalent
(``V2_TABLE4_TOTAL_FLOPS_PER_LAYER``; the least-squares fit over the 7 rows).
``worked_227m``: GFLOP/token and MB of weights read per decode step (bf16) of the FFN + memory
layers of OLMoE / UltraMem / UltraMemV2 / Memory+ at 227M/1.2B (spec §6.2 inputs; attention,
embeddings and the KV cache excluded).
"""
from __future__ import annotations

from absl import flags

from experiments import cli
from seedjax.train.memory_cost import V2_TABLE4_TOTAL_FLOPS_PER_LAYER, v2_table4, worked_227m_models

FLAGS = flags.FLAGS


def define_flags() -> None:
    """CLI flags, defined only when run as a script (no global flags on import)."""
    flags.DEFINE_enum("preset", "v2_table4", ["v2_table4", "worked_227m"], "Which table to print.")
    flags.DEFINE_float("bytes_per_param", 2.0, "Bytes per weight for memory access (2 = bf16).")
    flags.DEFINE_list("batches", ["1", "8", "64", "512", "4096"],
                      "Decode batch sizes (tokens per step) for worked_227m.")


def v2_table4_markdown() -> list[str]:
    md = [f"V2 Table 4 (500M/6B; D=1152, knum=964, TopM=94, Dv=Dp=144, r=h_c=2); total fitted "
          f"{V2_TABLE4_TOTAL_FLOPS_PER_LAYER / 1e6:.1f} MFLOP per layer-equivalent", "",
          "| Dk | MCP ours (%) | MCP paper (%) | diff (pp) |", "|---|---|---|---|"]
    for dk, ours, paper in v2_table4():
        md.append(f"| {dk} | {ours:.1f} | {paper:.1f} | {ours - paper:+.2f} |")
    return md


def worked_227m_markdown(batches, bytes_per_param) -> list[str]:
    models = worked_227m_models()
    md = ["| | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    md.append("| GFLOP/token (FFN+mem) | " + " | ".join(
        f"{sum(n * c.forward_flops() for n, c in parts) / 1e9:.3f}"
        for parts in models.values()) + " |")
    for b in batches:
        md.append(f"| MB read, B = {b} | " + " | ".join(
            f"{sum(n * c.decode_bytes_total(b, bytes_per_param) for n, c in parts) / 1e6:,.0f}"
            for parts in models.values()) + " |")
    return md


def main(argv):
    del argv
    with cli.expected_errors():
        batches = cli.int_list("--batches", FLAGS.batches, minimum=1)
        if not FLAGS.bytes_per_param > 0:
            raise ValueError(f"--bytes_per_param={FLAGS.bytes_per_param} must be > 0")
    if FLAGS.preset == "v2_table4":
        md = v2_table4_markdown()
    else:
        md = worked_227m_markdown(batches, FLAGS.bytes_per_param)
    print("\n".join(md))


if __name__ == "__main__":
    cli.run(main, define_flags)
