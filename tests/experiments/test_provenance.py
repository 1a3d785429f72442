"""Run provenance (experiments/provenance.py) and the commands a page prints
(experiments/reproduce.reproduce_commands): what a run file records about its origin, how a
page summarises it, and that the printed commands make exactly the finished runs."""
from experiments import provenance
from experiments.reproduce import reproduce_commands


def test_current_records_commit_versions_full_command_and_machine():
    argv = ["reproduce.py", "--config", "c.py:cpu", "--out", "r", "--rows", "a,b", "--seeds", "1"]
    p = provenance.current(argv, "c.py:cpu")
    assert len(p["commit"]) == 40 and isinstance(p["dirty_files"], list)
    assert p["command"] == ("python -m experiments.reproduce --config c.py:cpu --out r "
                            "--rows a,b --seeds 1")  # --rows and --seeds are kept
    assert p["versions"]["jax"] and p["machine"].endswith(", cpu") and p["config"] == "c.py:cpu"


def test_summary_counts_runs_per_commit_and_flags_edits_and_missing_records():
    rec = lambda commit, dirty: {"provenance": {  # noqa: E731
        "commit": commit, "dirty_files": dirty, "versions": {"jax": "0.10.2"},
        "machine": "x86_64, 2 cores, cpu"}}
    lines = provenance.summary_lines([rec("a" * 40, []), rec("a" * 40, []),
                                      rec("b" * 40, ["x.py"]), {}])
    assert lines[0] == ("Runs: 4. Commits: aaaaaaaaaa (2 runs); "
                        "bbbbbbbbbb (+uncommitted edits) (1 run).")
    assert lines[1] == "Versions: jax 0.10.2 (3 runs)." and lines[-1] == "1 run has no provenance record."


def test_commands_group_rows_by_seed_set_and_drop_rows_when_all_share_it():
    rows = [{"name": n} for n in ("a", "b", "c")]
    run = lambda r, s: {"row": r, "seed": s}  # noqa: E731
    same = [run(r, s) for r in "abc" for s in (0, 1)]
    assert reproduce_commands("c.py", "out", rows, same) == [
        "python -m experiments.reproduce --config c.py --out out --seeds 0,1"]
    mixed = [run("a", 0), run("a", 1), run("b", 0), run("c", 1), run("c", 0)]
    assert reproduce_commands("c.py", "out", rows, mixed) == [
        "python -m experiments.reproduce --config c.py --out out --rows a,c --seeds 0,1",
        "python -m experiments.reproduce --config c.py --out out --rows b --seeds 0"]


def test_dirty_paths_keep_their_first_character_and_skip_results():
    from experiments.provenance import paths_from_porcelain
    text = " M results/over_tokenized/table.md\n M README.md\nM  seedjax/a.py\nR  old.py -> new.py\n"
    assert paths_from_porcelain(text) == ["README.md", "seedjax/a.py", "new.py"]
