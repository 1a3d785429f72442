"""``python -m experiments.bench generate``: the K/V cache byte count against the caches the model
really allocates, the flag checks, and one small end-to-end run (``smoke`` LM) writing the JSON
and markdown."""
import json

import jax
import pytest

from experiments import bench_generate as bg
from tests.experiments.bench_runner import run_bench


def test_kv_cache_bytes_equal_the_allocated_caches():
    model = bg._model("smoke", 40)
    cache = model.init_cache(3, 40)
    allocated = sum(a.nbytes for c in cache for a in (c.k, c.v))
    assert bg.kv_cache_bytes(model.cfg, 3, 40) == allocated
    assert all(c.k.shape == (3, model.cfg.kv_heads, 40, model.cfg.resolved_head_dim)
               for c in cache)


@pytest.mark.parametrize("args,match", [
    (["--gen_new_tokens=1"], "--gen_new_tokens=1 must be an integer >= 2"),
    (["--gen_variant=huge"], "--gen_variant"),
    (["--gen_batches=0"], "--gen_batches"),
])
def test_bad_flags_fail_with_the_flag_named(args, match, capsys):
    with pytest.raises(SystemExit):
        run_bench("generate", *args)
    assert match in capsys.readouterr().err


def test_small_run_writes_rows_for_every_setting(tmp_path, capsys):
    run_bench("generate", "--gen_variant=smoke", "--gen_batches=1,2", "--gen_prompts=4,8",
              "--gen_new_tokens=4", "--gen_repeats=1", f"--out={tmp_path}")
    r = json.loads((tmp_path / "generate.json").read_text())
    assert [(x["batch"], x["prompt"]) for x in r["rows"]] == [(1, 4), (1, 8), (2, 4), (2, 8)]
    model = bg._model("smoke", 8 + 4)
    for x in r["rows"]:
        assert x["decode_ms_per_step"] >= 0 and x["prefill_s"] > 0   # a difference of times
        assert x["kv_cache_mb"] == pytest.approx(
            bg.kv_cache_bytes(model.cfg, x["batch"], x["prompt"] + 4) / 1e6)
        assert x["step_mb"] > x["weight_mb"] > 0
    md = (tmp_path / "generate.md").read_text()
    assert "--gen_batches=1,2" in md and md.count("\n| ") == 5   # header + 4 rows
    jax.clear_caches()
