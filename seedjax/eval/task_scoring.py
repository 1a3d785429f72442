"""Teacher-forced greedy scoring of an LM on synthetic-task episodes (``seedjax.data.synthetic``
lists them: the memory tasks, ``mano``, ``multihop``, ``capo``).

Scoring: one jitted forward per batch of episodes ``tokens`` int32 [B, T] (``T <= max_seq_len``;
the last batch and, in ``evaluate_tasks``, shorter tasks are zero-padded so every task shares
one compiled shape); the model's greedy prediction of token ``t`` is ``argmax(logits[:, t - 1])``
with the true tokens before ``t`` as input (teacher forcing). Scored positions are the answer
tokens themselves (``answer_mask``; see the convention in ``seedjax.data.episodes``). ``model``
is any ``nnx.Module`` whose call ``model(tokens)`` returns an object with ``.logits`` [B, T, V]
(``seedjax.models.LM`` returns an ``LMOutput``). ``teacher_forced`` also returns the per-token
cross-entropy (``seedjax.eval.capacity`` uses it).

Metrics of a task (``evaluate_task``; all JSON-serialisable):

* ``token_acc``: fraction of answer tokens predicted right;
* ``exact_match``: fraction of queries whose answer tokens are all right;
* ``chance``: token accuracy of guessing uniformly over the task's answer alphabet;
* ``n_episodes``, ``n_queries``, ``n_answer_tokens``;
* ICL only, control queries about withheld symbols: ``unseen_token_acc``,
  ``unseen_exact_match``, ``n_unseen_queries``, ``unseen_chance`` (``1 / n_unseen``, the
  best a model knowing ``f`` is a bijection can do on the first control query).

Evaluation episodes come from the ``test`` split (disjoint seed stream from the ``train`` and
``val`` splits that ``data.source="task:..."`` trains on; ``mano``'s test split holds only the
longest expressions, ``multihop``'s only held-out questions). For ``mano`` and ``multihop``,
whose answer is one token, ``exact_match == token_acc``.

Whole-model probes (``MODEL_PROBES``; named in ``task_eval.tasks`` like the tasks, each a
function of the model and the run config):

* ``cfg_generation`` (Over-Tokenized Transformer Sec. 3.1 / App. B.2; the function
  ``cfg_generation``): the run must train on a ``task:cfg(...)`` source. ``episodes``
  sequences are sampled from the model with the KV cache (``seedjax.eval.sampling.generate``),
  each from the prompt ``[bos]``, with raw next-token probabilities (temperature 1, top_p 1:
  the paper's setting), for the source's longest sentence + 1 steps (room for the eos), in
  batches of exactly ``batch_size`` (one compiled shape; the surplus of the last batch is
  dropped). They are judged by ``seedjax.eval.cfg_accuracy.generation_accuracy`` (exact
  recogniser). Metrics: ``gen_acc`` (accepted fraction; the report's column), ``gen_ci95``
  (Wilson 95% interval), ``n_episodes``, ``n_accepted``, ``mean_length``, ``n_truncated`` (no
  eos within the limit), ``n_distinct`` (distinct accepted sentences), ``ref_mean_length`` (the
  source's exact mean sentence length), ``grammar``, ``max_len``, ``temperature``, ``top_p``,
  ``sample_s``.
* ``capo_capacity`` (Ouro Sec. 6.1 / App. B.1; ``seedjax.eval.capacity.evaluate_capacity``):
  the run must train on a ``task:capo(...)`` source. What the model knows about that world,
  from one biography per person: ``p1``, ``p2`` (nats per person on the name / attribute
  tokens), ``bits``, ``max_bits``, ``n_params``, ``n_people`` and ``bits_per_param`` R(F) (the
  report's column).
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.data.cfg import CfgTaskConfig, length_distribution
from seedjax.data.episodes import generate_episodes
from seedjax.data.memory_tasks import MEMORY_TASKS
from seedjax.data.synthetic import TASKS, is_task_source, parse_task_source
from seedjax.validation import check_choice, check_int

__all__ = ["teacher_forced", "greedy_hits", "score_episodes", "evaluate_task", "evaluate_tasks",
           "tasks_from_config", "evaluate_config", "markdown_table", "MODEL_PROBES",
           "source_task", "cfg_generation", "capo_capacity"]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _teacher_forced(graphdef, state, tokens):
    logits = nnx.merge(graphdef, state)(tokens).logits[:, :-1].astype(jnp.float32)
    targets = tokens[:, 1:]
    hits = jnp.argmax(logits, axis=-1) == targets
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return hits, jax.nn.logsumexp(logits, axis=-1) - picked


def teacher_forced(model, tokens, *, batch_size: int = 32, pad_to: int | None = None,
                   progress: bool = False, desc: str = "score") -> tuple[np.ndarray, np.ndarray]:
    """``(hits bool [N, T], nll float32 [N, T])``: ``hits[i, t]`` iff the greedy prediction of
    ``tokens[i, t]`` from ``tokens[i, :t]`` is right, ``nll[i, t]`` its cross-entropy in nats
    (column 0 is False / 0: nothing predicts the first token). ``pad_to`` right-pads the
    forward's input with zeros (causal: no effect) so tasks of different lengths share one
    compiled shape."""
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"episode tokens must be [N, T>=2], got shape {tokens.shape}")
    n, t = tokens.shape
    width = max(t, pad_to or 0)
    mcfg = getattr(model, "cfg", None)
    max_len = getattr(mcfg, "max_seq_len", None)
    if max_len is not None and width > max_len:
        raise ValueError(f"episodes are {width} tokens, more than model.max_seq_len={max_len}; "
                         "evaluate smaller task sizes (e.g. cfg.scaled_to(max_seq_len)).")
    vocab = getattr(mcfg, "vocab_size", None)
    if vocab is not None and int(tokens.max()) >= vocab:
        raise ValueError(f"episode token ids reach {int(tokens.max())}, outside "
                         f"model.vocab_size={vocab}; evaluate tasks whose ids fit the model.")
    bs = min(check_int("batch_size", batch_size, 1), n)
    graphdef, state = nnx.split(model)
    hits, nll = np.zeros((n, t), bool), np.zeros((n, t), np.float32)
    starts = range(0, n, bs)
    if progress:
        from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
        starts = tqdm(starts, desc=desc, unit="batch", dynamic_ncols=True)
    for s in starts:
        chunk = np.zeros((bs, width), np.int32)  # zero rows pad a ragged last batch
        m = len(tokens[s:s + bs])
        chunk[:m, :t] = tokens[s:s + bs]
        h, l = (np.asarray(a) for a in _teacher_forced(graphdef, state, jnp.asarray(chunk)))
        hits[s:s + m, 1:] = h[:m, :t - 1]
        nll[s:s + m, 1:] = l[:m, :t - 1]
    return hits, nll


def greedy_hits(model, tokens, **kw) -> np.ndarray:
    """bool [N, T]: the hits of ``teacher_forced`` (same keywords)."""
    return teacher_forced(model, tokens, **kw)[0]


def _summary(hits: np.ndarray, mask: np.ndarray, query_id: np.ndarray) -> dict:
    """Token accuracy and per-query exact match over the positions in ``mask``."""
    n_tok = int(mask.sum())
    if n_tok == 0:
        return {"token_acc": float("nan"), "exact_match": float("nan"), "n_queries": 0,
                "n_answer_tokens": 0}
    row = np.broadcast_to(np.arange(mask.shape[0])[:, None], mask.shape)[mask].astype(np.int64)
    key = row * (int(query_id.max()) + 1) + query_id[mask]
    ok = hits[mask]
    n_q = len(np.unique(key))
    n_wrong = len(np.unique(key[~ok]))
    return {"token_acc": float(ok.mean()), "exact_match": 1.0 - n_wrong / n_q,
            "n_queries": n_q, "n_answer_tokens": n_tok}


def score_episodes(model, episodes: dict, *, batch_size: int = 32, pad_to: int | None = None,
                   progress: bool = False, desc: str = "score") -> dict:
    """Metrics of ``model`` on stacked episodes (``episodes.generate_episodes`` output)."""
    hits = greedy_hits(model, episodes["tokens"], batch_size=batch_size, pad_to=pad_to,
                       progress=progress, desc=desc)
    out = {"n_episodes": int(len(hits)),
           **_summary(hits, episodes["answer_mask"], episodes["query_id"])}
    if episodes["control_mask"].any():
        ctrl = _summary(hits, episodes["control_mask"], episodes["query_id"])
        out.update({"unseen_token_acc": ctrl["token_acc"],
                    "unseen_exact_match": ctrl["exact_match"],
                    "n_unseen_queries": ctrl["n_queries"]})
    return out


def evaluate_task(model, cfg, *, n_episodes: int = 256, seed: int = 0, split: str = "test",
                  batch_size: int = 32, pad_to: int | None = None,
                  progress: bool = False) -> dict:
    """Metrics (module docstring) of ``model`` on ``n_episodes`` held-out episodes of ``cfg``."""
    episodes = generate_episodes(cfg, n_episodes, seed, split)
    out = score_episodes(model, episodes, batch_size=batch_size, pad_to=pad_to,
                         progress=progress, desc=cfg.name)
    out["chance"] = cfg.chance
    if hasattr(cfg, "unseen_chance") and "unseen_token_acc" in out:
        out["unseen_chance"] = cfg.unseen_chance
    return out


def evaluate_tasks(model, tasks: dict, **kw) -> dict:
    """``{name: evaluate_task(model, cfg, **kw)}`` for ``tasks`` = ``{name: task config}``; all
    tasks are padded to the longest one's length (one compiled forward)."""
    max_len = getattr(getattr(model, "cfg", None), "max_seq_len", None)
    if max_len is not None:
        for cfg in tasks.values():  # fail before spending time on the other tasks
            cfg.check_fits(max_len)
    kw.setdefault("pad_to", max(cfg.length for cfg in tasks.values()))
    return {name: evaluate_task(model, cfg, **kw) for name, cfg in tasks.items()}


def source_task(config, task: str, probe: str):
    """The config of ``task`` in a run config's ``task:`` source (``ValueError`` naming the
    ``probe`` that needs it if the source has none)."""
    source = config.data.source
    found = parse_task_source(source).tasks.get(task) if is_task_source(source) else None
    if found is None:
        raise ValueError(f"task_eval.tasks='{probe}' needs data.source='task:{task}(...)', "
                         f"got {source!r}")
    return found


def cfg_generation(model, task: CfgTaskConfig, *, episodes: int = 1000, batch_size: int = 250,
                   seed: int = 0, temperature: float = 1.0, top_p: float = 1.0) -> dict:
    """Generation accuracy of ``model`` on the grammar of ``task`` (module docstring)."""
    from seedjax.eval.cfg_accuracy import generation_accuracy  # pylint: disable=g-import-not-at-top
    from seedjax.eval.sampling import generate  # pylint: disable=g-import-not-at-top
    episodes = check_int("task_eval.episodes", episodes, 1)
    bs = min(check_int("task_eval.batch_size", batch_size, 1), episodes)
    grammar, steps = task.cfg, task.limit + 1      # the longest sentence, then its eos
    mcfg = getattr(model, "cfg", None)
    if mcfg is not None and 1 + steps > mcfg.max_seq_len:
        raise ValueError(f"cfg_generation samples bos + {steps} tokens ({task._fields()}), more "
                         f"than model.max_seq_len={mcfg.max_seq_len}")
    if mcfg is not None and mcfg.vocab_size < grammar.vocab_size:
        raise ValueError(f"grammar {task.grammar!r} needs model.vocab_size >= "
                         f"{grammar.vocab_size}, got {mcfg.vocab_size}")
    prompt = np.full((bs, 1), grammar.bos_id, np.int32)
    calls = [0]

    def sample_fn(k):
        out = np.asarray(generate(model, prompt, steps, temperature=temperature, top_p=top_p,
                                  seed=seed * 65536 + calls[0]))
        calls[0] += 1
        return out[:k]

    t0 = time.time()
    r = generation_accuracy(sample_fn, grammar, episodes, batch_size=bs)
    pmf = length_distribution(grammar)[:task.limit + 1]
    return {"gen_acc": r["accuracy"], "gen_ci95": r["ci95"], "n_episodes": r["n"],
            "n_accepted": r["n_accepted"], "mean_length": r["mean_length"],
            "n_truncated": r["n_truncated"], "n_distinct": r["n_distinct"],
            "ref_mean_length": float((pmf * np.arange(len(pmf))).sum() / pmf.sum()),
            "grammar": task.grammar, "max_len": task.limit, "temperature": float(temperature),
            "top_p": float(top_p), "sample_s": time.time() - t0}


def capo_capacity(model, task, *, batch_size: int = 32, seed: int = 0,
                  episodes: int | None = None) -> dict:
    """Knowledge capacity of ``model`` on the world of ``task`` (a ``CapoConfig``; module
    docstring). ``seed`` picks the biography template of each person; ``episodes`` is unused
    (every person is scored once)."""
    del episodes
    from seedjax.eval.capacity import evaluate_capacity  # pylint: disable=g-import-not-at-top
    return evaluate_capacity(model, task, seed=seed, batch_size=batch_size)


# whole-model probes: name -> (the task its run must train on, fn(model, that task's config,
# episodes=, batch_size=, seed=))
MODEL_PROBES = {
    "cfg_generation": ("cfg", cfg_generation),
    "capo_capacity": ("capo", capo_capacity),
}


def tasks_from_config(config, names=None) -> dict:
    """Task configs to evaluate for a run config: those of its ``data.source`` when it is a
    ``task:`` source (the sizes it trained on); a requested task not in the source gets its
    default config scaled to ``data.seq_len``. ``names`` (list or comma string; default all
    tasks of the source, or all memory tasks) selects and orders them."""
    source = config.data.source
    trained = parse_task_source(source).tasks if is_task_source(source) else {}
    if isinstance(names, str):
        names = [n for n in names.split(",") if n]
    names = list(names or trained or MEMORY_TASKS)
    for n in names:
        check_choice("task", n, tuple(TASKS))
    seq_len = int(config.data.seq_len)
    return {n: trained[n] if n in trained else TASKS[n]().scaled_to(seq_len) for n in names}


def evaluate_config(model, config, *, progress: bool = False) -> dict | None:
    """Task metrics per ``config.task_eval`` (fields ``tasks`` comma string or "", ``episodes``,
    ``batch_size``, ``seed``; ``tasks`` may name ``MODEL_PROBES``), or None when the config
    has no ``task_eval`` block (the hook ``experiments.reproduce`` calls after each run)."""
    te = config.get("task_eval") if hasattr(config, "get") else None
    if not te:
        return None
    names = te.get("tasks", "")
    names = [n for n in names.split(",") if n] if isinstance(names, str) else list(names or [])
    probes = [n for n in names if n in MODEL_PROBES]
    kw = dict(episodes=int(te.get("episodes", 256)), seed=int(te.get("seed", 0)),
              batch_size=int(te.get("batch_size", 32)))
    out = {}
    if not probes or len(probes) < len(names):  # teacher-forced tasks (none named: the source's)
        tasks = tasks_from_config(config, [n for n in names if n not in MODEL_PROBES])
        out = evaluate_tasks(model, tasks, n_episodes=kw["episodes"], seed=kw["seed"],
                             batch_size=kw["batch_size"], progress=progress)
    for n in probes:
        task, probe = MODEL_PROBES[n]
        out[n] = probe(model, source_task(config, task, n), **kw)
    return {n: out[n] for n in (names or out)}


def _table(header: list[str], rows: list[str]) -> list[str]:
    """The lines of one markdown table: header cells, separator, rows."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows]


def markdown_table(results: dict) -> str:
    """Markdown tables of ``{task: metrics}`` (``evaluate_config`` output): teacher-forced tasks
    first, then generation probes (metrics with ``gen_acc``), then capacity probes (metrics with
    ``bits_per_param``), each kind in a table of its own."""
    gen = {k: m for k, m in results.items() if "gen_acc" in m}
    cap = {k: m for k, m in results.items() if "bits_per_param" in m}
    forced = {k: m for k, m in results.items() if k not in gen and k not in cap}
    tables = []
    if forced or not (gen or cap):
        tables.append(_table(
            ["task", "token acc", "exact match", "chance", "unseen-x acc (chance)", "queries"],
            [f"| {k} | {m['token_acc']:.3f} | {m['exact_match']:.3f} | {m['chance']:.3f} | "
             + (f"{m['unseen_token_acc']:.3f} ({m['unseen_chance']:.3f})"
                if "unseen_token_acc" in m else "") + f" | {m['n_queries']} |"
             for k, m in forced.items()]))
    if gen:
        tables.append(_table(
            ["task", "generation acc", "95% CI", "mean length (grammar)", "truncated",
             "distinct", "samples"],
            [f"| {k} | {m['gen_acc']:.3f} | [{m['gen_ci95'][0]:.3f}, {m['gen_ci95'][1]:.3f}] | "
             f"{m['mean_length']:.1f} ({m['ref_mean_length']:.1f}) | {m['n_truncated']} | "
             f"{m['n_distinct']} | {m['n_episodes']} |" for k, m in gen.items()]))
    if cap:
        tables.append(_table(
            ["probe", "bits / param", "bits (max)", "p1 name nats", "p2 attribute nats",
             "params", "people"],
            [f"| {k} | {m['bits_per_param']:.4f} | {m['bits']:.0f} ({m['max_bits']:.0f}) | "
             f"{m['p1']:.2f} | {m['p2']:.2f} | {m['n_params']} | {m['n_people']} |"
             for k, m in cap.items()]))
    return "\n\n".join("\n".join(t) for t in tables)
