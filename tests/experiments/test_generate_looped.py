"""experiments/generate_looped.py end to end on the converted ``ouro_tiny`` fixture: with the byte
tokenizer and with a tokenizer.json (a tiny BPE trained here with the ``tokenizers`` package),
and flag errors as one ``error:`` line with exit code 2."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from experiments import generate_looped as gl

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "ouro_tiny"
pytestmark = pytest.mark.skipif(not (FIXTURE / "config.json").exists(),
                                reason=f"Ouro fixture not found at {FIXTURE}")
OPTS = ["--max_new_tokens", "6", "--exit_threshold", "0.5", "--kv_policy", "last_available"]


def cli(args):
    """Runs the CLI in-process on its own FlagValues; returns the result dict."""
    fv = gl.define_flags(flags.FlagValues())
    fv(["generate_looped", "--checkpoint", str(FIXTURE), *args])
    return gl.main_with(fv)


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    """A byte-level BPE (vocab 300 <= the fixture's 320) trained on a few strings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the looped model exits early", "the model loops four times",
                             "looped language models reason in latent space"] * 20, trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


def test_byte_and_tokenizer_json_end_to_end(tokenizer_json, tmp_path, capsys):
    """Both tokenizers run end to end (same shapes, so the second run reuses the compile):
    texts printed, loops executed per token = exit loop + 1 with mean and histogram printed,
    tokens/s reported, the JSON written; the tokenizer.json path encodes with the trained BPE
    (fewer tokens than bytes) and decodes the generated ids with it."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tokenizer_json))
    text = "the looped model"
    n = len(tok.encode(text).ids)
    assert n < len(text)
    out = tmp_path / "r.json"
    r_bpe = cli(["--tokenizer", str(tokenizer_json), "--prompt", text, "--json_out", str(out),
                 *OPTS])
    printed = capsys.readouterr().out
    r_byte = cli(["--prompt", "x" * n, *OPTS])
    printed_byte = capsys.readouterr().out
    for r, p in ((r_bpe, printed), (r_byte, printed_byte)):
        s = r["stats"]
        assert s["loops"] == 4 and s["kv_policy"] == "last_available" and s["exit_arg"] == 0.5
        exits, loops = np.asarray(r["exit_steps"]), np.asarray(r["token_loops"])
        np.testing.assert_array_equal(loops[:, 1:], exits[:, 1:] + 1)
        assert s["mean_loops"] == pytest.approx(loops[:, 1:].mean())
        assert sum(s["loops_histogram"].values()) == 5 and s["tokens_per_s"] > 0
        assert "loops executed per decoded token: mean" in p and "histogram 1:" in p
        assert "tokens/s" in p
    assert r_bpe["texts"][0] == tok.decode(r_bpe["new_tokens"][0], skip_special_tokens=False)
    assert printed.startswith(text + r_bpe["texts"][0])
    assert json.loads(out.read_text())["stats"]["loops"] == 4


@pytest.mark.parametrize("args, message", [
    (["--prompt", "a", "--exit_threshold", "1.5"], "--exit_threshold=1.5 must be in (0, 1]"),
    (["--prompt", "a", "--exit_at_step", "-1"], "--exit_at_step=-1 must be >= 0"),
    (["--prompt", "a", "--kv_policy", "bogus"], "--kv_policy"),
    (["--prompt", "a", "--weighted_exit", "--kv_policy", "final_exit_shared"], "full_per_depth"),
    (["--prompt", "a", "--exit_at_step", "4"], "exit_at_step=4 must be an integer in [0, 4)"),
])
def test_flag_errors_are_one_line_exit_2(args, message):
    """Bad flag values print one ``error:`` line naming the flag and exit 2 (out-of-range
    exit_at_step is caught after loading: the checkpoint gives T)."""
    p = subprocess.run([sys.executable, "-m", "experiments.generate_looped", "--checkpoint",
                        str(FIXTURE), *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], p.stderr
    assert "Traceback" not in p.stderr
