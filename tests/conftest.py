"""Test setup: 8 fake CPU devices, set before jax is imported anywhere.

``SEEDJAX_TEST_PLATFORM=gpu`` (or ``tpu``) runs on that accelerator instead, without fake
devices: for the hardware tier (``pytest -m hardware``, tier 4 of DESIGN.md's kernel evidence);
most other tests assume the 8 CPU devices.
"""
import os

_PLATFORM = os.environ.get("SEEDJAX_TEST_PLATFORM", "cpu")
os.environ["JAX_PLATFORMS"] = _PLATFORM
flags = os.environ.get("XLA_FLAGS", "")
if _PLATFORM == "cpu" and "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pathlib  # noqa: E402
import sysconfig  # noqa: E402

import pytest  # noqa: E402

_CORPUS_MODULES = ("textwrap.py", "string.py", "shlex.py", "fnmatch.py", "glob.py", "bisect.py",
                   "heapq.py", "colorsys.py", "keyword.py", "queue.py", "sched.py", "tokenize.py",
                   "difflib.py", "calendar.py", "pprint.py")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> str:
    """A ~300 KB folder of Python source (copied stdlib files): fast to load in tests."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    out = tmp_path_factory.mktemp("corpus")
    for name in _CORPUS_MODULES:
        (out / name.replace(".py", ".txt")).write_bytes((root / name).read_bytes())
    return str(out)


def smoke_config(corpus: str, **train):
    """configs/lm.py:smoke on ``corpus`` with train overrides (tests)."""
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from configs.lm import get_config
    cfg = get_config("smoke")
    cfg.data.source = corpus
    cfg.mesh.shape = dict(data=-1, fsdp=1, model=1, expert=1, mem=1)
    cfg.train.update(train)
    return cfg
