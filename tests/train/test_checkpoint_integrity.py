"""Checkpoints you can trust: each step carries a sha256 manifest written after orbax commits
it; on resume a latest step that is unreadable or fails verification is moved aside (never
deleted) with one warning line naming the step and the file, and the run resumes from the newest
good step, bitwise as if uninterrupted from there.

One 6-step run (checkpoints at 3 and 6) is trained once per module; every case corrupts a copy
of it. Restoring is checked in-process (no compilation); one case trains on to the end.
"""
import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from seedjax.train.checkpoint import MANIFEST, Checkpointer, CorruptCheckpoint
from seedjax.train.loop import Trainer
from tests.conftest import smoke_config

KW = dict(steps=6, checkpoint_every=3, eval_every=100, log_every=2)


@pytest.fixture(scope="module", autouse=True)
def _no_peak_measurement():
    """Every Trainer measures a 2048^3 matmul (~2 s on 2 cores) for MFU; not needed here."""
    import seedjax.train.loop as loop
    orig = loop.peak_flops_per_device
    loop.peak_flops_per_device = lambda: (1e11, "fixed for tests")
    yield
    loop.peak_flops_per_device = orig


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_corpus):
    """(workdir, step-3 train state as saved, step-6 params of the uninterrupted run)."""
    wd = tmp_path_factory.mktemp("ckpt") / "run"
    t = Trainer(smoke_config(small_corpus, **KW), str(wd), progress=False)
    assert t.run()["step"] == 6
    final = jax.device_get(t.state["params"])
    ck = Checkpointer(str(wd / "checkpoints"))
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          t.state)
    at3, data3, _ = ck.restore(3, target, t.param_shapes)
    ck.close()
    return wd, jax.device_get(at3), data3, final


def _copy(trained, tmp_path):
    wd = tmp_path / "run"
    shutil.copytree(trained[0], wd)
    return wd, wd / "checkpoints" / "6"


def _biggest_array_file(step_dir):
    files = [os.path.join(d, n) for d, _, ns in os.walk(step_dir / "state") for n in ns
             if "/d/" in os.path.join(d, n)]
    return max(files, key=os.path.getsize)


def _truncate(step):
    p = _biggest_array_file(step)
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 2)
    return os.path.relpath(p, step)


def _flip(step):
    p = _biggest_array_file(step)
    b = bytearray(open(p, "rb").read())
    b[len(b) // 2] ^= 0x01  # one bit: same size, still decodes
    open(p, "wb").write(bytes(b))
    return os.path.relpath(p, step)


def _delete_array(step):
    p = _biggest_array_file(step)
    os.remove(p)
    return os.path.relpath(p, step)


def _delete_metadata(step):
    os.remove(step / "state" / "_METADATA")
    return "state/_METADATA"


def _garble_metadata(step):
    (step / "_CHECKPOINT_METADATA").write_text("{not json")
    return "_CHECKPOINT_METADATA"


def _empty_folder(step):
    shutil.rmtree(step)
    step.mkdir()
    return "(step folder)"


def _garble_meta_no_manifest(step):  # a committed step without manifest: structural checks
    os.remove(step / MANIFEST)
    (step / "meta" / "metadata").write_text("garbage")
    return "meta/metadata"


CASES = {"truncated array file": _truncate, "flipped bytes": _flip,
         "deleted array file": _delete_array, "deleted metadata file": _delete_metadata,
         "garbled metadata file": _garble_metadata, "empty step folder": _empty_folder,
         "garbled metadata, no manifest": _garble_meta_no_manifest}


def _assert_tree_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("case", sorted(CASES))
def test_corrupt_latest_step_is_moved_aside_and_previous_restored(case, trained, tmp_path,
                                                                  small_corpus, capsys):
    """Each corruption of the latest step (6): one warning line naming step 6 and the bad
    file, the folder renamed to 6.corrupt-1 (contents kept), and the restored state and data
    position are exactly step 3's."""
    wd, step6 = _copy(trained, tmp_path)
    bad_file = CASES[case](step6)
    n_files = sum(len(f) for _, _, f in os.walk(step6))
    capsys.readouterr()
    t = Trainer(smoke_config(small_corpus, **KW), str(wd), progress=False)
    state, start = t._init_or_restore()
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert "checkpoint step 6" in warnings[0] and bad_file in warnings[0], warnings[0]
    assert "6.corrupt-1" in warnings[0] and "resuming from the newest older step (3)" in warnings[0]
    assert start == 3
    assert sorted(os.listdir(wd / "checkpoints")) == ["3", "6.corrupt-1"]
    assert sum(len(f) for _, _, f in os.walk(wd / "checkpoints" / "6.corrupt-1")) == n_files
    _assert_tree_equal(jax.device_get(state), trained[1])
    assert t.data.get_state() == trained[2]
    t.ckpt.close()


def test_resume_after_flipped_bytes_finishes_bitwise_equal(trained, tmp_path, small_corpus):
    """Flipped bytes in step 6 (which loaded silently before): the run resumes from step 3
    and its final parameters equal the uninterrupted run's bit for bit."""
    wd, step6 = _copy(trained, tmp_path)
    _flip(step6)
    t = Trainer(smoke_config(small_corpus, **KW), str(wd), progress=False)
    summary = t.run()
    assert summary["status"] == "completed" and summary["step"] == 6
    _assert_tree_equal(jax.device_get(t.state["params"]), trained[3])
    assert "6.corrupt-1" in os.listdir(wd / "checkpoints")


def test_no_good_step_is_one_error_naming_the_workdir(trained, tmp_path, small_corpus, capsys):
    """Both steps corrupt: both moved aside, then a ValueError naming the workdir; a rerun
    keeps refusing (it does not silently start from scratch)."""
    wd, step6 = _copy(trained, tmp_path)
    _flip(step6)
    _truncate(wd / "checkpoints" / "3")
    for _ in range(2):
        t = Trainer(smoke_config(small_corpus, **KW), str(wd), progress=False)
        with pytest.raises(ValueError, match="no usable checkpoint in " + str(wd)) as e:
            t._init_or_restore()
        assert "3.corrupt-1" in str(e.value) and "6.corrupt-1" in str(e.value)
        assert "\n" not in str(e.value)
    assert sorted(os.listdir(wd / "checkpoints")) == ["3.corrupt-1", "6.corrupt-1"]


def test_step_without_manifest_is_restored_with_a_warning(trained, tmp_path, small_corpus,
                                                         capsys):
    """A committed step without manifest (killed between orbax's commit and the manifest, or
    saved before manifests existed) is restored after structural checks, with a warning that
    it is unverified; nothing is moved."""
    wd, step6 = _copy(trained, tmp_path)
    os.remove(step6 / MANIFEST)
    capsys.readouterr()
    t = Trainer(smoke_config(small_corpus, **KW), str(wd), progress=False)
    _, start = t._init_or_restore()
    assert start == 6 and sorted(os.listdir(wd / "checkpoints")) == ["3", "6"]
    err = capsys.readouterr().err
    assert "checkpoint step 6" in err and "no checksum manifest" in err, err
    t.ckpt.close()


def test_optimizer_structure_change_is_a_config_error_not_corruption(trained, tmp_path,
                                                                    small_corpus):
    """A step whose optimizer state lacks the clip slot (saved before it existed, with
    train.grad_clip=0) stops with one line naming train.grad_clip; the step is not moved."""
    wd, _ = _copy(trained, tmp_path)
    t = Trainer(smoke_config(small_corpus, **KW), str(wd), progress=False)
    state, _ = t._init_or_restore()
    old = {**state, "opt_state": tuple(state["opt_state"][1:])}  # the pre-clip-slot layout
    meta = t._meta()
    meta["config"]["train"]["grad_clip"] = 0.0
    t.ckpt.save(9, old, t.data.get_state(), meta, wait=True)
    t.ckpt.close()
    t = Trainer(smoke_config(small_corpus, **KW), str(wd), progress=False)
    with pytest.raises(ValueError, match="train.grad_clip") as e:
        t._init_or_restore()
    assert "\n" not in str(e.value) and "corrupt" not in str(e.value)
    assert "9" in os.listdir(wd / "checkpoints")


def test_manifest_covers_every_file_of_the_step(trained, tmp_path):
    """Written by process 0 after the commit: every file under the step folder is listed with
    its size and sha256, and the step verifies; load_model (generation) refuses a corrupt step
    with an error naming it, without moving anything."""
    from seedjax.train.checkpoint import check_step
    step6 = trained[0] / "checkpoints" / "6"
    listed = json.load(open(step6 / MANIFEST))["files"]
    on_disk = {os.path.relpath(os.path.join(d, n), step6) for d, _, ns in os.walk(step6)
               for n in ns} - {MANIFEST}
    assert set(listed) == on_disk and "commit_success.txt" in listed
    assert check_step(str(step6)) == ("ok", "", "")
    from seedjax.train.restore import load_model
    wd, step6 = _copy(trained, tmp_path)
    bad = _flip(step6)
    with pytest.raises(CorruptCheckpoint, match=f"step 6 .* is corrupt: {bad}"):
        load_model(str(wd))
    assert "6" in os.listdir(wd / "checkpoints")
