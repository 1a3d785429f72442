"""Orbax checkpoints of the train state, the data-iterator state and run metadata, verified on
restore.

Layout per step: ``state`` (StandardSave of the train-state pytree), ``data`` (JSON grain
iterator state), ``meta`` (JSON: parameter shapes, config, versions), and
``seedjax_manifest.json``: the size and sha256 of every other file under the step folder.

When the manifest is written: after orbax has committed the step (its final folder holds
``commit_success.txt``), by process 0 only, from a background thread that polls for the commit
(training goes on meanwhile; ``wait()``/``close()`` wait for it). Every process writes its own
array files; the commit (and so the manifest) comes after all of them. It is written to a
temporary name and renamed, so a manifest is either complete or absent.

How a step is judged before it is restored (``check_step``):
* manifest present: every listed file must exist with the recorded size and sha256 (catches
  truncated, deleted and flipped-byte array and metadata files); a garbled manifest is bad.
* no manifest: a kill during a save leaves orbax's temporary folder (``<step>.orbax-checkpoint-
  tmp-*``), which orbax never lists as a step, so it is simply ignored. A committed step without
  a manifest (killed in the short window between the commit and the manifest, or saved before
  seedjax wrote manifests) is *unverified*: its metadata files must exist and parse, and the
  restore must succeed; flipped bytes in its array files cannot be detected.
* an empty step folder is bad.
A bad step is never deleted: the trainer (``repair=True``) renames it to
``<step>.corrupt-<n>`` (orbax ignores that name) with a one-line warning on stderr and resumes
from the newest good step; ``load_model`` raises ``CorruptCheckpoint`` naming the file.

Restore also checks the saved parameter shapes and the saved train-state tree against the
current config first, and raises a ValueError naming the first mismatching parameter or the
changed config field (a different optimizer-state structure is a config change, not corruption).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

MANIFEST = "seedjax_manifest.json"
COMMIT_FILE = "commit_success.txt"
# files every committed step has (a missing or unparsable one makes a step without manifest bad)
REQUIRED_JSON = ("_CHECKPOINT_METADATA", "state/_METADATA", "data/metadata", "meta/metadata")


class CorruptCheckpoint(ValueError):
    """A checkpoint step that is unreadable or fails verification (``file`` names the culprit)."""

    def __init__(self, directory: str, step: int, file: str, reason: str):
        self.directory, self.step, self.file, self.reason = directory, step, file, reason
        super().__init__(f"checkpoint step {step} in {directory} is corrupt: {file}: {reason}")


def _files(root: str) -> list[str]:
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root) for n in names]
    return sorted(out)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(step_dir: str) -> None:
    """Size + sha256 of every file under ``step_dir`` (except the manifest), written atomically."""
    files = {}
    for rel in _files(step_dir):
        if rel in (MANIFEST, MANIFEST + ".tmp"):
            continue
        p = os.path.join(step_dir, rel)
        files[rel] = {"size": os.path.getsize(p), "sha256": _sha256(p)}
    tmp = os.path.join(step_dir, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"version": 1, "files": files}, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(step_dir, MANIFEST))


def check_step(step_dir: str) -> tuple[str, str, str]:
    """("ok" | "unverified" | "bad", file, reason) for one step folder (see the module doc)."""
    files = _files(step_dir) if os.path.isdir(step_dir) else []
    if not files:
        return "bad", "(step folder)", "empty step folder"
    mpath = os.path.join(step_dir, MANIFEST)
    if os.path.exists(mpath):
        try:
            with open(mpath) as f:
                listed = json.load(f)["files"]
            items = [(rel, int(e["size"]), str(e["sha256"])) for rel, e in listed.items()]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            return "bad", MANIFEST, f"manifest unreadable ({type(e).__name__})"
        if not items:
            return "bad", MANIFEST, "manifest lists no files"
        for rel, size, sha in sorted(items):
            p = os.path.join(step_dir, rel)
            if not os.path.isfile(p):
                return "bad", rel, "missing (listed in the manifest written at save time)"
            got = os.path.getsize(p)
            if got != size:
                return "bad", rel, f"{got} bytes, {size} when saved (truncated or overwritten)"
            if _sha256(p) != sha:
                return "bad", rel, "sha256 differs from the one recorded at save time"
        return "ok", "", ""
    for rel in REQUIRED_JSON:
        p = os.path.join(step_dir, rel)
        if not os.path.isfile(p):
            return "bad", rel, "missing"
        try:
            with open(p) as f:
                json.load(f)
        except (ValueError, UnicodeDecodeError):
            return "bad", rel, "not valid JSON (garbled)"
    return "unverified", "", "no checksum manifest"


def _agree(text: str) -> str:
    """Process 0's ``text`` on every process (multi-process runs decide together)."""
    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils
    buf = np.zeros(4096, np.uint8)
    raw = text.encode()[:4096]
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return bytes(out).rstrip(b"\0").decode(errors="replace")


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 2, repair: bool = False):
        # remote paths (gs://...) go to orbax unchanged (no manifest there); local ones absolute
        self.local = "://" not in directory
        self.directory = os.path.abspath(directory) if self.local else directory
        self.repair = repair
        self._verdicts: dict[int, tuple[str, str, str]] = {}
        self._writers: list[tuple[threading.Thread, threading.Event]] = []
        self.moved: list[str] = []
        if repair and self.local and os.path.isdir(self.directory):
            self._sweep()  # before orbax reads the steps' metadata
        self.manager = self._make_manager(max_to_keep)

    def _make_manager(self, max_to_keep: int):
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "data", "meta"))

    # -------------------------------------------------------------- verification
    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def verdict(self, step: int) -> tuple[str, str, str]:
        """``check_step`` of ``step`` as process 0 sees it (cached; shared by all processes)."""
        if not self.local:
            return "unverified", "", "remote checkpoint (no manifest)"
        if step not in self._verdicts:
            mine = check_step(self.step_dir(step)) if jax.process_index() == 0 else ("", "", "")
            self._verdicts[step] = tuple(json.loads(_agree(json.dumps(mine))))
        return self._verdicts[step]

    def check(self, step: int) -> None:
        """Raises ``CorruptCheckpoint`` if ``step`` fails verification."""
        status, file, reason = self.verdict(step)
        if status == "bad":
            raise CorruptCheckpoint(self.directory, step, file, reason)

    def _sweep(self) -> None:
        """Moves aside bad steps from the newest down, until a good or unverified one."""
        steps = sorted((int(n) for n in os.listdir(self.directory) if n.isdigit()), reverse=True)
        for step in steps:
            status, file, reason = self.verdict(step)
            if status != "bad":
                break
            self.move_aside(CorruptCheckpoint(self.directory, step, file, reason), reload=False)

    def corrupt_dirs(self) -> list[str]:
        if not (self.local and os.path.isdir(self.directory)):
            return []
        return sorted(n for n in os.listdir(self.directory) if ".corrupt-" in n)

    def move_aside(self, err: CorruptCheckpoint, *, reload: bool = True) -> str:
        """Renames the bad step folder to ``<step>.corrupt-<n>`` (never deletes it) and prints
        one warning line (process 0)."""
        n = 1
        while os.path.exists(self.step_dir(err.step) + f".corrupt-{n}"):
            n += 1
        new = _agree(f"{err.step}.corrupt-{n}")  # process 0's name, before it renames
        if jax.process_index() == 0:
            os.rename(self.step_dir(err.step), os.path.join(self.directory, new))
        _barrier(f"seedjax_move_aside_{new}")
        self._verdicts.pop(err.step, None)
        self.moved.append(new)
        if reload:
            self.manager.reload()
        left = sorted((int(s) for s in os.listdir(self.directory) if s.isdigit()), reverse=True)
        then = (f"resuming from the newest older step ({left[0]})" if left
                else "no older step left")
        if jax.process_index() == 0:
            print(f"warning: checkpoint step {err.step} in {self.directory} is unusable "
                  f"({err.file}: {err.reason}); moved it to {new} (not deleted); {then}",
                  file=sys.stderr, flush=True)
        log.info("moved corrupt checkpoint step %d to %s", err.step, new)
        return new

    # -------------------------------------------------------------- save
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict, meta: dict, *, wait: bool = False) -> None:
        started = self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta)))
        if started and self.local and jax.process_index() == 0:
            done = threading.Event()
            t = threading.Thread(target=self._manifest_after_commit, args=(step, done),
                                 name=f"seedjax-manifest-{step}", daemon=True)
            t.start()
            self._writers.append((t, done))
        if wait:
            self.wait()

    def _manifest_after_commit(self, step: int, done: threading.Event) -> None:
        step_dir = self.step_dir(step)
        commit = os.path.join(step_dir, COMMIT_FILE)
        while not os.path.exists(commit):
            if done.wait(0.02) and not os.path.exists(commit):
                log.warning("checkpoint step %d did not commit; no manifest written", step)
                return
        try:
            write_manifest(step_dir)
        except OSError as e:  # e.g. the step was removed meanwhile (max_to_keep)
            log.warning("could not write the manifest of checkpoint step %d: %s", step, e)

    def wait(self) -> None:
        """Waits for pending saves and their manifests."""
        self.manager.wait_until_finished()
        for t, done in self._writers:
            done.set()
            t.join()
        self._writers = []

    def close(self) -> None:
        self.wait()
        self.manager.close()

    # -------------------------------------------------------------- restore
    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, abstract_state: Any, expected_shapes: dict,
                config: dict | None = None) -> tuple[Any, dict, dict]:
        """Returns (state, data_state, meta); ``abstract_state`` carries target shardings.

        Raises ``CorruptCheckpoint`` (a ValueError) if the step fails verification or (without
        a manifest) cannot be read, and a ValueError naming the parameter or config field if it
        does not fit the current model/optimizer."""
        self.check(step)
        status = self.verdict(step)[0]
        verified = status == "ok"
        if status == "unverified" and self.local and jax.process_index() == 0:
            print(f"warning: checkpoint step {step} in {self.directory} has no checksum manifest "
                  "(killed between the commit and the manifest, or saved by an older seedjax); "
                  "restoring it with orbax's own checks only", file=sys.stderr, flush=True)
        try:
            meta = self.read_meta(step)
        except Exception as e:  # noqa: BLE001 (any read error of an unverified step)
            if verified:
                raise
            raise CorruptCheckpoint(self.directory, step, "meta", _first_line(e)) from e
        check_shapes(meta.get("param_shapes", {}), expected_shapes, self.directory)
        if self.local:
            check_structure(self.step_dir(step), abstract_state, meta.get("config", {}),
                            config, step, self.directory)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001
            if verified:
                raise
            raise CorruptCheckpoint(self.directory, step, "state", _first_line(e)) from e
        return out["state"], out["data"], out["meta"]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def check_shapes(saved: dict, expected: dict, where: str) -> None:
    """ValueError naming the first parameter whose shape differs (or that is missing)."""
    for name in sorted(set(saved) | set(expected)):
        a, b = saved.get(name), expected.get(name)
        if a is None or b is None or list(a) != list(b):
            raise ValueError(
                f"checkpoint in {where} does not match the model: parameter {name!r} has shape "
                f"{a} in the checkpoint but {b} in the current model config; use a new --workdir "
                "or the config the checkpoint was trained with")


def _key(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _flat_config(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and k != "lr_multipliers" and not k.endswith("_kwargs"):
            out.update(_flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_structure(step_dir: str, abstract_state: Any, saved_config: dict,
                    config: dict | None, step: int, where: str) -> None:
    """ValueError (one line) naming the changed config field when the saved train-state tree
    differs from the one the current config builds (e.g. an optimizer-state layout change)."""
    try:
        with open(os.path.join(step_dir, "state", "_METADATA")) as f:
            tree = json.load(f)["tree_metadata"]
        saved = {"/".join(str(m["key"]) for m in e["key_metadata"]) for e in tree.values()
                 if (e.get("value_metadata") or {}).get("value_type") != "None"}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpoint(where, step, "state/_METADATA", _first_line(e)) from e
    leaves = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
    expected = {"/".join(_key(k) for k in path) for path, _ in leaves}
    if saved == expected:
        return
    diff = sorted(saved - expected) or sorted(expected - saved)
    old, new = _flat_config(saved_config), _flat_config(config or {})
    relevant = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
                and (k.startswith("model.") or k in ("train.grad_clip", "train.lr_multipliers"))]
    if relevant:
        why = "changed config fields: " + ", ".join(
            f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in relevant)
    elif "opt_state" in diff[0] and not old.get("train.grad_clip"):
        why = ("saved by an older seedjax with train.grad_clip=0, whose optimizer state had no "
               "clip slot")
    else:
        why = "no config field differs (saved by a different seedjax version)"
    raise ValueError(
        f"checkpoint step {step} in {where} holds a different train-state structure than this "
        f"config builds (first difference: {diff[0]}); {why}; resume with the config and "
        "seedjax version it was saved with, or start a new --workdir")


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with shardings, the restore target for orbax."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
