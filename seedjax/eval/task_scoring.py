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
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.data.episodes import generate_episodes
from seedjax.data.memory_tasks import MEMORY_TASKS
from seedjax.data.synthetic import TASKS, is_task_source, parse_task_source
from seedjax.validation import check_choice, check_int

__all__ = ["teacher_forced", "greedy_hits", "score_episodes", "evaluate_task", "evaluate_tasks",
           "tasks_from_config", "evaluate_config", "markdown_table"]


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
    ``batch_size``, ``seed``), or None when the config has no ``task_eval`` block (the hook
    ``experiments.reproduce`` calls after each run)."""
    te = config.get("task_eval") if hasattr(config, "get") else None
    if not te:
        return None
    tasks = tasks_from_config(config, te.get("tasks", ""))
    return evaluate_tasks(model, tasks, n_episodes=int(te.get("episodes", 256)),
                          seed=int(te.get("seed", 0)), batch_size=int(te.get("batch_size", 32)),
                          progress=progress)


def markdown_table(results: dict) -> str:
    """A markdown table of ``{task: metrics}`` (``evaluate_tasks`` output)."""
    lines = ["| task | token acc | exact match | chance | unseen-x acc (chance) | queries |",
             "|---|---|---|---|---|---|"]
    for name, m in results.items():
        unseen = (f"{m['unseen_token_acc']:.3f} ({m['unseen_chance']:.3f})"
                  if "unseen_token_acc" in m else "")
        lines.append(f"| {name} | {m['token_acc']:.3f} | {m['exact_match']:.3f} | "
                     f"{m['chance']:.3f} | {unseen} | {m['n_queries']} |")
    return "\n".join(lines)
