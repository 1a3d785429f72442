"""configs/memory_tasks.py: every variant's episodes fit its windows, the CPU variants train on
distinct episodes only, bad variants name the allowed ones, and the sweep's paper column
matches the measured quantity (task scores for the task variants, losses for facts)."""
import pytest

from configs import memory_tasks as cfg_mod
from seedjax.data.synthetic import parse_task_source

TASK_VARIANTS = tuple(cfg_mod.TASK_SIZES) + tuple(cfg_mod.FACTS)


@pytest.mark.parametrize("variant", TASK_VARIANTS)
def test_episodes_fit_and_cpu_variants_never_repeat_an_episode(variant):
    """Each task of data.source fits data.seq_len; a CPU run sees at most one pass (blocks >=
    steps * batch_size), so held-in recall cannot come from repeated training episodes."""
    c = cfg_mod.get_config(variant)
    spec = parse_task_source(c.data.source)
    for task in spec.tasks.values():
        task.check_fits(c.data.seq_len)
    if "smoke" not in variant:
        assert spec.blocks >= c.train.steps * c.data.batch_size


def test_cpu_is_mqar_alone_and_mixture_has_all_three_tasks():
    """The CPU comparison runs on MQAR only; the mixture variant keeps all three tasks, and
    its multi-round task asks among >= 2 facts per round (not a fixed-offset copy); the
    single-task variants keep the mixture's sizes."""
    assert list(parse_task_source(cfg_mod.get_config("cpu").data.source).tasks) == ["mqar"]
    mix = parse_task_source(cfg_mod.get_config("mixture_cpu").data.source).tasks
    assert list(mix) == ["mqar", "multi_round", "icl"]
    assert mix["multi_round"].facts_per_round >= 2
    for task in ("multi_round", "icl"):  # each alone, with the mixture's sizes
        alone = parse_task_source(cfg_mod.get_config(f"{task}_cpu").data.source).tasks
        assert alone == {task: mix[task]}


def test_bad_variant_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"variant 'gpu' unknown; allowed: .*'mixture_cpu'"):
        cfg_mod.get_config("gpu")
    with pytest.raises(ValueError, match="variant 'gpu' unknown"):
        cfg_mod.get_sweep("gpu")


def test_paper_column_is_table2_scores_for_tasks_and_empty_for_facts():
    """Same design rows for every variant (the facts sweeps add one control row); the task sweep
    quotes UltraMemV2 Table 2 (e.g. MoE 41.3 KV retrieval); the facts sweep has no paper
    counterpart, so it quotes nothing (not Table 3's unrelated eval losses)."""
    tasks = {r["name"]: r["paper"] for r in cfg_mod.get_sweep("cpu")}
    facts = {r["name"]: r["paper"] for r in cfg_mod.get_sweep("facts_cpu")}
    assert list(facts) == list(tasks) + ["dense_narrow_ffn"]
    assert tasks["moe"].startswith("41.3") and tasks["v2_official_init"].startswith("57.1")
    assert set(facts.values()) == {"-"} and tasks["dense"] == "-"


def test_facts_control_is_the_memory_rows_ffn_without_memory():
    """The facts control row has no memory and exactly the FFN width the memory rows keep, so
    memory row minus control is what the memory adds to storage."""
    rows = {r["name"]: r["overrides"] for r in cfg_mod.get_sweep("facts512_cpu")}
    control = rows["dense_narrow_ffn"]
    assert control["model.memory"] == "none"
    for name in ("ultramem", "ultramem_v2", "v2_official_init"):
        assert control["model.mlp_dim"] == rows[name]["model.mlp_dim"]
    assert control["model.mlp_dim"] < cfg_mod.get_config("facts512_cpu").model.mlp_dim
