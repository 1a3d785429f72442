"""tasks.png: held-out task accuracy per row with every seed (experiments/task_plot.py)."""


def test_task_values_and_plot(tmp_path):
    """task_values keeps (seed, accuracy) of the runs that scored the task; the plot is written
    for rows with and without scores."""
    from experiments.task_plot import plot_task_accuracy, task_metric, task_values
    runs = [{"seed": 0, "tasks": {"mqar": {"token_acc": 0.2, "chance": 0.1}}},
            {"seed": 1, "tasks": {"icl": {"token_acc": 0.5}}}, {"seed": 2}]
    assert task_values(runs, "mqar") == [(0, 0.2)]
    assert task_metric(runs[0], "mqar", "chance") == 0.1 and task_metric(runs[2], "mqar") is None
    path = plot_task_accuracy(str(tmp_path), [{"name": "a"}, {"name": "b"}],
                              {"a": runs, "b": []}, ["icl", "mqar"])
    assert path.endswith("tasks.png") and (tmp_path / "tasks.png").stat().st_size > 0
