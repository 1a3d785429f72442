"""``python -m experiments.bench over_encoding``: the cost of over-encoding (Over-Tokenized
Transformer, arXiv 2501.16975; issue 19 item 7) against the plain token embedding, measured in
one run on one machine.

Train arms: the baseline (embed "token") and over-encoding with n=2, k=1 at each table size m of
``sizes`` (primes), plus the paper's layout (n=3, k=2) at one m. Per arm: the median time of the
full jitted train step (forward, backward, AdamW update; compile excluded) and of the
forward+backward alone (gradients returned, no optimizer), so the O(m D) cost of dense Adam (it
reads and writes every table row every step) is separated from the lookup, which is O(1) in m.
Decode arms: one-token decode ``model(tok[:, None], cache=cache)`` (jitted, as in
``seedjax.eval.sampling``) for each batch B, baseline vs OE; the OE cache carries the (B, n-1)
token history (``seedjax.models.lm.DecodeCache``).

Arms are interleaved round-robin (each round visits every arm, starting at a rotating arm), so
machine drift hits all alike; ratios are of medians within this run. Byte columns: the n-gram
table's parameters x 16 bytes (f32 parameter + two Adam moments + gradient), in total and per
device when its rows are sharded over ``shards`` devices (ceil(rows / shards) x width x 16).
Writes <out>/over_encoding.{json,md} (and .png with ``plot``).
"""
from __future__ import annotations

import subprocess
import time

from experiments.bench_common import machine as _machine
from experiments.bench_common import write_result as _write

SIZES = (16381, 65521, 262139, 1048573, 4194301)   # primes; n=2, k=1 table params = m * D
PAPER_M = 262139
DECODE_BATCHES = (1, 16)
MODEL = dict(vocab_size=4096, d_model=128, n_layers=6, n_heads=4, mlp_dim=384, max_seq_len=128,
             head="tied")
TRAIN = dict(lr=1e-3, steps=10_000, warmup_steps=0, weight_decay=0.1, grad_clip=1.0)
BYTES_PER_PARAM = 16   # f32 parameter + 2 Adam moments + gradient
SHARDS = 8
MEMORY_FRACTION = 0.75 # sizes whose estimated resident bytes exceed this of MemAvailable are skipped

PAPER = {
    "table6_train_throughput": {
        "OLMoE-1.3B (32xA100)": {"base": 1.211, "oe": 1.155, "change": -0.0463},
        "OLMoE-7B (64xA100)": {"base": 0.494, "oe": 0.453, "change": -0.083}},
    "table7_decode_tokens_per_s": {  # 1xA100, HF transformers, OE tables offloaded to CPU
        "Dense-1B BS1": (136.2, 126.6), "Dense-1B BS8": (797.2, 760.9),
        "Dense-1B BS64": (1422.1, 1407.4), "MoE-1B/7B BS1": (28.2, 27.9),
        "MoE-1B/7B BS8": (184.9, 181.0), "MoE-1B/7B BS64": (860.3, 826.7),
        "Dense-7B BS1": (65.1, 63.3), "Dense-7B BS8": (232.1, 228.6)},
    "table8_forward_gflops_per_token": {"OLMoE-1.3B": (0.5409, 0.5430),
                                        "OLMoE-7B": (2.3578, 2.3662)},
}


def table_bytes(table_rows: int, width: int, shards: int = SHARDS) -> dict:
    """The n-gram table's training bytes: params x 16 (f32 weight, 2 Adam moments, gradient),
    in total and per device with the rows sharded over ``shards`` devices."""
    return {"table_params": table_rows * width,
            "table_bytes": table_rows * width * BYTES_PER_PARAM,
            "table_bytes_per_device": -(-table_rows // shards) * width * BYTES_PER_PARAM}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _lm_config(model: dict, embed_kwargs: dict | None):
    from seedjax.models import LMConfig
    if embed_kwargs is None:
        return LMConfig(**model)
    return LMConfig(**model, embed="over_encoding", embed_kwargs=dict(embed_kwargs))


def _arm_specs(sizes, paper_m, paper_n=3, paper_k=2) -> list[tuple[str, dict | None]]:
    arms = [("baseline", None)]
    arms += [(f"oe_n2_k1_m{m}", dict(m=m, n=2, k=1)) for m in sizes]
    if paper_m:
        arms.append((f"oe_n{paper_n}_k{paper_k}_m{paper_m}",
                     dict(m=paper_m, n=paper_n, k=paper_k)))
    return arms


def _oe_layout(mcfg, shards: int = SHARDS) -> dict:
    from seedjax.models.over_encoding_factories import over_encoding_config
    c = over_encoding_config(mcfg, **dict(mcfg.embed_kwargs))
    return {"m": c.m, "n": max(c.resolved_orders), "k": c.k, "slices": c.n_slices,
            "slice_width": c.slice_width, "moduli": list(c.moduli), "table_rows": c.table_rows,
            "history_len": c.history_len, **table_bytes(c.table_rows, c.slice_width, shards)}


def check_arms(sizes, paper_m: int | None, decode_m: int, model: dict | None = None) -> None:
    """ValueError (naming the flag) for a table size the over-encoding config rejects (e.g. a
    multiple of the vocabulary), before anything is compiled."""
    from seedjax.models.over_encoding_factories import over_encoding_config
    model = dict(MODEL if model is None else model)
    if not sizes:
        raise ValueError("--oe_sizes is empty: give at least one table size m")
    checks = [("--oe_sizes", dict(m=m, n=2, k=1)) for m in sizes]
    if paper_m:
        checks.append(("--oe_paper_m", dict(m=paper_m, n=3, k=2)))
    checks.append(("--oe_decode_m", dict(m=decode_m, n=3, k=2)))
    for flag, kw in checks:
        try:
            over_encoding_config(_lm_config(model, None), **kw)
        except ValueError as e:
            raise ValueError(f"{flag}: m={kw['m']}: {e}") from e


def _table_params(model: dict, embed_kwargs: dict | None) -> int:
    if embed_kwargs is None:
        return 0
    return _oe_layout(_lm_config(model, embed_kwargs))["table_params"]


def estimated_bytes(model: dict, specs) -> int:
    """Bytes the interleaved run holds for the n-gram tables: every arm's weight and two Adam
    moments (12 bytes/param) plus, for the largest table, a gradient and one more transient
    table-sized buffer (8 bytes/param)."""
    sizes = [_table_params(model, kw) for _, kw in specs]
    return 12 * sum(sizes) + 8 * max(sizes, default=0)


def _train_arm(name, embed_kwargs, model, train, batch, shards):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from seedjax.models import LM
    from seedjax.train import flops as flops_lib
    from seedjax.train.objectives import TokenCE
    from seedjax.train.optim import make_optimizer
    from seedjax.train.state import (abstract_model, count_params, init_params, model_def,
                                     param_labels)
    from seedjax.train.step import make_train_step

    mcfg = _lm_config(model, embed_kwargs)
    model_fn = lambda: LM(mcfg, rngs=nnx.Rngs(0))
    abstract = abstract_model(model_fn)
    mdef = model_def(abstract)
    tx, sched = make_optimizer(train, *param_labels(abstract))
    params = init_params(model_fn)
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": jax.jit(tx.init)(params),
             "rng": jax.random.key_data(jax.random.key(0))}
    t0 = time.perf_counter()
    step = jax.jit(make_train_step(mdef, tx, sched), donate_argnums=0).lower(state, batch).compile()
    objective = TokenCE()
    grad_fn = jax.value_and_grad(lambda p, b: objective.loss(mdef.merge(p), b, 0), has_aux=True)
    fwd_bwd = jax.jit(grad_fn).lower(params, batch).compile()
    compile_s = time.perf_counter() - t0
    cost = step.cost_analysis()
    xla_flops = float((cost if isinstance(cost, dict) else cost[0]).get("flops", float("nan")))
    mem = step.memory_analysis()
    state, metrics = step(state, batch)   # warm-up (first call)
    jax.block_until_ready(metrics["loss"])
    jax.block_until_ready(fwd_bwd(state["params"], batch))
    seq = batch["inputs"].shape[1]
    fwd_flops = sum(flops_lib.lm_forward_flops_per_token(mcfg, seq).values())
    info = {"arm": name, "embed": mcfg.embed, "params": count_params(params),
            "compile_s": compile_s, "xla_step_gflop": xla_flops / 1e9,
            "temp_bytes": int(getattr(mem, "temp_size_in_bytes", 0)),
            "model_fwd_flops_per_token": fwd_flops, "loss_first": float(metrics["loss"])}
    if embed_kwargs is not None:
        info.update(_oe_layout(mcfg, shards))
    return {"info": info, "step": step, "fwd_bwd": fwd_bwd, "state": state,
            "times": {"step": [], "fwd_bwd": []}}


def _run_train(arms, batch, rounds, steps_per_round):
    import jax
    names = list(arms)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            a = arms[n]
            for _ in range(steps_per_round):
                t0 = time.perf_counter()
                a["state"], m = a["step"](a["state"], batch)
                jax.block_until_ready(m["loss"])
                a["times"]["step"].append(time.perf_counter() - t0)
            for _ in range(steps_per_round):
                t0 = time.perf_counter()
                jax.block_until_ready(a["fwd_bwd"](a["state"]["params"], batch))
                a["times"]["fwd_bwd"].append(time.perf_counter() - t0)
        print(f"[bench over_encoding] train round {r + 1}/{rounds}", flush=True)


def _decode_arm(embed_kwargs, model, b, prompt_len):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from seedjax.models import LM
    from seedjax.train.state import abstract_model, init_params, model_def
    mcfg = _lm_config(model, embed_kwargs)
    model_fn = lambda: LM(mcfg, rngs=nnx.Rngs(0))
    lm = model_def(abstract_model(model_fn)).merge(init_params(model_fn))  # one jitted init
    graphdef, params = nnx.split(lm)

    def prefill(params, prompt):
        out = nnx.merge(graphdef, params)(prompt, cache=nnx.merge(graphdef, params).init_cache(
            prompt.shape[0], mcfg.max_seq_len))
        return jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32), out.cache

    def decode(params, tok, cache):
        out = nnx.merge(graphdef, params)(tok[:, None], cache=cache)
        return jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32), out.cache

    prompt = jnp.asarray(np.random.default_rng(2).integers(1, mcfg.vocab_size, (b, prompt_len)),
                         jnp.int32)
    tok, cache = jax.jit(prefill)(params, prompt)
    t0 = time.perf_counter()
    step = jax.jit(decode).lower(params, tok, cache).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(step(params, tok, cache))
    return {"step": step, "params": params, "start": (tok, cache), "compile_s": compile_s,
            "history_shape": (list(cache.embed.tokens.shape)
                              if hasattr(cache, "embed") else None), "times": []}


def _run_decode(arms, rounds, tokens_per_round):
    import jax
    names = list(arms)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            a = arms[n]
            tok, cache = a["start"]
            for _ in range(tokens_per_round):   # a chained decode from the prefilled cache
                t0 = time.perf_counter()
                tok, cache = a["step"](a["params"], tok, cache)
                jax.block_until_ready(tok)
                a["times"].append(time.perf_counter() - t0)


def _stats(times) -> dict:
    import numpy as np
    t = np.asarray(times)
    return {"median_s": float(np.median(t)), "min_s": float(t.min()),
            "p10_s": float(np.percentile(t, 10)),
            "p90_s": float(np.percentile(t, 90)), "n": int(t.size)}


def _slope(xs, ys) -> float:
    """Least-squares slope of ys on xs."""
    import numpy as np
    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


def bench_over_encoding(out_dir: str = "results/bench", *, sizes=SIZES, paper_m: int = PAPER_M,
                        decode_m: int = PAPER_M, decode_batches=DECODE_BATCHES, rounds: int = 12,
                        steps_per_round: int = 1, decode_rounds: int = 30,
                        decode_tokens: int = 16, prompt_len: int = 16, batch_size: int = 16,
                        seq_len: int = 128, model: dict | None = None, train: dict | None = None,
                        shards: int = SHARDS, plot: bool = True, command: str = "",
                        name: str = "over_encoding") -> dict:
    """Runs the benchmark (module docstring) and writes ``<out_dir>/<name>.{json,md}``."""
    import jax
    import numpy as np

    model = dict(MODEL if model is None else model)
    model["max_seq_len"] = max(model.get("max_seq_len", seq_len), seq_len,
                               prompt_len + decode_tokens)
    train = dict(TRAIN if train is None else train)
    start = _machine()
    mem_avail = _mem_available()
    specs = _arm_specs(sizes, paper_m)
    skipped = []
    if mem_avail is not None:   # drop the largest tables if the interleaved states would not fit
        while len(specs) > 2 and estimated_bytes(model, specs) > MEMORY_FRACTION * mem_avail:
            need = estimated_bytes(model, specs)
            big = max(range(1, len(specs)), key=lambda i: _table_params(model, specs[i][1]))
            skipped.append({"arm": specs[big][0], "reason": f"estimated {need / 2**30:.1f} GiB "
                            f"for all arms > {MEMORY_FRACTION} x MemAvailable "
                            f"{mem_avail / 2**30:.1f} GiB"})
            specs.pop(big)
    x = jax.random.randint(jax.random.key(1), (batch_size, seq_len + 1), 0, model["vocab_size"])
    batch = {"inputs": x[:, :-1], "targets": x[:, 1:]}
    t_run = time.perf_counter()
    arms = {}
    for arm_name, kw in specs:
        arms[arm_name] = _train_arm(arm_name, kw, model, train, batch, shards)
        print(f"[bench over_encoding] compiled {arm_name} "
              f"({arms[arm_name]['info']['compile_s']:.1f} s)", flush=True)
    _run_train(arms, batch, rounds, steps_per_round)
    base = arms["baseline"]
    base_step = float(np.median(base["times"]["step"]))
    base_fb = float(np.median(base["times"]["fwd_bwd"]))
    base["times_min"] = {k: float(np.min(v)) for k, v in base["times"].items()}
    base_flops = base["info"]["model_fwd_flops_per_token"]
    rows = []
    for a in arms.values():
        st, fb = _stats(a["times"]["step"]), _stats(a["times"]["fwd_bwd"])
        rows.append({**a["info"], "step": st, "fwd_bwd": fb,
                     "step_ratio": st["median_s"] / base_step,
                     "step_ratio_min": st["min_s"] / base["times_min"]["step"],
                     "fwd_bwd_ratio_min": fb["min_s"] / base["times_min"]["fwd_bwd"],
                     "fwd_bwd_ratio": fb["median_s"] / base_fb,
                     "update_s": st["median_s"] - fb["median_s"],
                     "update_share": (st["median_s"] - fb["median_s"]) / st["median_s"],
                     "fwd_flops_ratio": a["info"]["model_fwd_flops_per_token"] / base_flops})
    del arms, base
    n2 = [r for r in rows if r.get("n") == 2 and r.get("k") == 1]
    fit = {"step_s_per_m_table_params": _slope([r["table_params"] / 1e6 for r in n2],
                                               [r["step"]["median_s"] for r in n2]),
           "fwd_bwd_s_per_m_table_params": _slope([r["table_params"] / 1e6 for r in n2],
                                                  [r["fwd_bwd"]["median_s"] for r in n2])}
    fit["update_s_per_m_table_params"] = (fit["step_s_per_m_table_params"]
                                          - fit["fwd_bwd_s_per_m_table_params"])
    print("[bench over_encoding] decode ...", flush=True)
    dec_specs = [(f"{'baseline' if kw is None else 'oe'}_B{b}", kw, b)
                 for b in decode_batches
                 for kw in (None, dict(m=decode_m, n=3, k=2))]
    dec = {n: {**_decode_arm(kw, model, b, prompt_len), "batch": b,
               "embed": "token" if kw is None else "over_encoding"} for n, kw, b in dec_specs}
    _run_decode(dec, decode_rounds, decode_tokens)
    dec_rows = []
    for b in decode_batches:
        ref = float(np.median(dec[f"baseline_B{b}"]["times"]))
        ref_min = float(np.min(dec[f"baseline_B{b}"]["times"]))
        for kind in ("baseline", "oe"):
            d = dec[f"{kind}_B{b}"]
            s = _stats(d["times"])
            dec_rows.append({"arm": f"{kind}_B{b}", "embed": d["embed"], "batch": b,
                             "ms_per_token_step": 1e3 * s["median_s"],
                             "ms_p10": 1e3 * s["p10_s"], "ms_p90": 1e3 * s["p90_s"],
                             "ms_min": 1e3 * s["min_s"],
                             "tokens_per_s": b / s["median_s"], "n": s["n"],
                             "time_ratio": s["median_s"] / ref,
                             "time_ratio_min": s["min_s"] / ref_min,
                             "throughput_change": ref / s["median_s"] - 1,
                             "compile_s": d["compile_s"], "history_shape": d["history_shape"]})
    del dec
    end = _machine()
    result = {
        "benchmark": "over_encoding", "command": command, "commit": _commit(), **start,
        "load_avg_end": end["load_avg"], "time_end": end["time"],
        "wall_s": time.perf_counter() - t_run, "mem_available_bytes": mem_avail,
        "estimated_table_bytes": estimated_bytes(model, specs),
        "model": model, "train": train, "batch": batch_size, "seq_len": seq_len,
        "rounds": rounds, "steps_per_round": steps_per_round, "sizes": list(sizes),
        "paper_m": paper_m, "skipped": skipped, "bytes_per_param": BYTES_PER_PARAM,
        "shards": shards, "rows": rows, "fit_n2": fit,
        "decode": {"m": decode_m, "n": 3, "k": 2, "batches": list(decode_batches),
                   "prompt_len": prompt_len, "tokens_per_round": decode_tokens,
                   "rounds": decode_rounds, "rows": dec_rows},
        "paper": PAPER,
    }
    md = _markdown(result)
    if plot:
        result["plot"] = _plot(out_dir, name, result)
        if result["plot"]:
            md += ["", f"![step time vs table size]({name}.png)"]
    _write(out_dir, name, result, md)
    return result


def _mb(x: float) -> str:
    return f"{x / 2**20:,.1f}"


def _markdown(r: dict) -> list[str]:
    m = r["model"]
    v = r["versions"]
    md = [f"# Over-encoding cost: train step vs table size, and decode ({r['time']})", "",
          f"Command: `{r['command']}`  ", f"Commit: `{r['commit']}`  ",
          f"Machine: {r['device_kind']} x{len(r['devices'])}, {r['cpu_count']} cores, "
          f"{r['machine']}; load average {r['load_avg']} at the start, {r['load_avg_end']} at "
          f"the end (shared machine); jax {v.get('jax')}, flax {v.get('flax')}, optax "
          f"{v.get('optax')}. Wall time {r['wall_s']:.0f} s.", "",
          f"Model: d={m['d_model']}, {m['n_layers']} layers, {m['n_heads']} heads, mlp "
          f"{m['mlp_dim']}, vocab {m['vocab_size']} (random tokens), tied head; batch "
          f"{r['batch']} x seq {r['seq_len']}; AdamW (b2 0.95, grad clip {r['train'].get('grad_clip')}"
          f"; tables in their own lr group, no weight decay), float32. Median of {r['rounds']} "
          f"rounds x {r['steps_per_round']} step(s) per arm, arms interleaved round-robin; "
          "compile and first call excluded. Ratios are of medians; in brackets the ratio of the "
          "fastest samples (less sensitive to other processes on a shared machine).", ""]
    if r["skipped"]:
        md += ["Skipped for memory: " + "; ".join(f"{s['arm']} ({s['reason']})"
                                                  for s in r["skipped"]), ""]
    md += ["## Train step", "",
           f"Bytes: n-gram table params x {r['bytes_per_param']} (f32 weight + 2 Adam moments "
           f"+ gradient); per device = rows sharded over {r['shards']} devices. "
           "`fwd+bwd` = loss and gradients only (no optimizer); `update` = step - fwd+bwd "
           "(global-norm clip, AdamW, lr scaling, apply, and the step's grad/param-norm metrics: "
           "each a pass over every parameter, the table included).", "",
           f"| arm | m | n,k | params | table params | table MiB | MiB/device (/{r['shards']}) | "
           "step ms "
           "(p10-p90) | step / base (min) | fwd+bwd ms | fwd+bwd / base (min) | update ms "
           "(share) | fwd FLOPs / base |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        st, fb = row["step"], row["fwd_bwd"]
        if "table_params" in row:
            oe = (f"{row['m']} | {row['n']},{row['k']}", f"{row['table_params'] / 1e6:.2f}M",
                  _mb(row["table_bytes"]), _mb(row["table_bytes_per_device"]))
        else:
            oe = ("- | -", "-", "-", "-")
        md.append(
            f"| {row['arm']} | {oe[0]} | {row['params'] / 1e6:.2f}M | {oe[1]} | {oe[2]} | "
            f"{oe[3]} | {1e3 * st['median_s']:.1f} ({1e3 * st['p10_s']:.0f}-"
            f"{1e3 * st['p90_s']:.0f}) | {row['step_ratio']:.3f} ({row['step_ratio_min']:.3f}) | "
            f"{1e3 * fb['median_s']:.1f} | {row['fwd_bwd_ratio']:.3f} "
            f"({row['fwd_bwd_ratio_min']:.3f}) | {1e3 * row['update_s']:.1f} "
            f"({row['update_share']:.0%}) | {row['fwd_flops_ratio']:.4f} |")
    f = r["fit_n2"]
    md += ["", f"Least-squares slope over the n=2, k=1 arms, per million table parameters: step "
           f"{1e3 * f['step_s_per_m_table_params']:+.2f} ms, fwd+bwd "
           f"{1e3 * f['fwd_bwd_s_per_m_table_params']:+.2f} ms, update "
           f"{1e3 * f['update_s_per_m_table_params']:+.2f} ms.", ""]
    md += _reading(r)
    d = r["decode"]
    md += ["## Decode step", "",
           f"One-token decode `model(tok[:, None], cache=cache)` (jitted, greedy, chained "
           f"{d['tokens_per_round']} tokens from a {d['prompt_len']}-token prefill, "
           f"{d['rounds']} interleaved rounds); OE = n={d['n']}, k={d['k']}, m={d['m']}, its "
           "(B, n-1) token history carried in the cache.", "",
           "| B | embed | ms/step (p10-p90) | tokens/s | time / base (min / min) | "
           "throughput change |",
           "|---|---|---|---|---|---|"]
    for row in d["rows"]:
        md.append(f"| {row['batch']} | {row['embed']} | {row['ms_per_token_step']:.2f} "
                  f"({row['ms_p10']:.2f}-{row['ms_p90']:.2f}) | {row['tokens_per_s']:.0f} | "
                  f"{row['time_ratio']:.3f} ({row['time_ratio_min']:.3f}) | "
                  f"{row['throughput_change']:+.1%} |")
    p = r["paper"]
    t6 = p["table6_train_throughput"]
    t7 = p["table7_decode_tokens_per_s"]
    t8 = p["table8_forward_gflops_per_token"]
    md += ["", "## Paper's numbers beside ours", "",
           "* Table 8, forward FLOPs: " + "; ".join(
               f"{k} {a} -> {b} GFLOP/token ({b / a - 1:+.2%})" for k, (a, b) in t8.items())
           + ". Ours (model FLOPs, `seedjax/train/flops.py`): the fwd FLOPs / base column; the "
           "projections add 2 D^2 per token whatever m, a larger share at d=128 than at the "
           "paper's widths.",
           "* Table 6, training throughput with tables sharded (all-to-all lookups): " + "; ".join(
               f"{k} {x['base']} -> {x['oe']} M tok/s ({x['change']:+.1%})"
               for k, x in t6.items()) + ". Ours: the step / base column (one CPU process, no "
           "communication).",
           "* Table 7, decode tokens/s with tables offloaded to CPU (1xA100): " + "; ".join(
               f"{k} {a} -> {b} ({b / a - 1:+.1%})" for k, (a, b) in t7.items()) + ".", "",
           "## What this CPU run can and cannot show", "",
           "* It can show the single-process cost of the lookup, the projections, the history and "
           "the dense optimizer as the table grows, all measured in one interleaved run. The "
           "lookup and projections are O(1) in m; what grows with m is memory traffic over the "
           "whole table: the dense gradient (a zero-filled [rows, width] buffer plus a "
           "scatter-add, in fwd+bwd) and AdamW, which reads and writes the weight, both moments "
           "and the gradient of every row every step (in update).",
           "* It cannot show the paper's distributed costs: the all-to-all of sharded lookups "
           "(Table 6's overhead, which grows with the data-parallel size), GPU kernels, or CPU "
           "offload over PCIe (Table 7). Per-device bytes are arithmetic, not measured on 8 "
           "devices. The paper's nearly-flat time in m holds when the optimizer touches only the "
           "looked-up rows or the table update is sharded over many devices; with one device and "
           "a dense Adam the update term is O(m D) and dominates at large m.",
           "* The machine is shared (load average above): ratios are of medians within one "
           "interleaved run, so drift hits every arm alike, but single cells can move by several "
           "percent between runs; the decode ratios at ~ms per step are the noisiest."]
    return md


def _reading(r: dict) -> list[str]:
    """Sentences computed from this run's rows (no numbers typed in by hand)."""
    n2 = [row for row in r["rows"] if row.get("n") == 2 and row.get("k") == 1]
    out = []
    if len(n2) >= 2:
        lo, hi = n2[0], n2[-1]
        out.append(
            f"* n=2, k=1 from m={lo['m']} to m={hi['m']} ({hi['table_params'] / lo['table_params']:.0f}x "
            f"the table): step / base {lo['step_ratio']:.2f} -> {hi['step_ratio']:.2f}, fwd+bwd / "
            f"base {lo['fwd_bwd_ratio']:.2f} -> {hi['fwd_bwd_ratio']:.2f}; the update is "
            f"{hi['update_share']:.0%} of the step at the largest m. Arms whose ratio is within "
            "the baseline's own p10-p90 spread are not distinguishable from it here.")
    for row in r["rows"]:
        twin = next((x for x in n2 if row.get("n") != 2 and x["m"] == row.get("m")), None)
        if twin is not None:
            out.append(
                f"* Same m={row['m']} and table parameters, n={row['n']}, k={row['k']} "
                f"({row['slices']} slices of width {row['slice_width']}) vs n=2, k=1 (one slice of "
                f"width {twin['slice_width']}): step {1e3 * row['step']['median_s']:.0f} vs "
                f"{1e3 * twin['step']['median_s']:.0f} ms, fwd+bwd "
                f"{1e3 * row['fwd_bwd']['median_s']:.0f} vs {1e3 * twin['fwd_bwd']['median_s']:.0f} "
                f"ms, update {1e3 * row['update_s']:.0f} vs {1e3 * twin['update_s']:.0f} ms. What "
                f"differs: {row['slices']}x the gathered and scatter-added rows per token (each "
                "narrower), order-3 row ids, a narrower table layout; the model FLOPs are equal "
                "(S w D = D^2). This run does not separate which of these costs the time.")
    return out + [""] if out else []


def _plot(out_dir: str, name: str, r: dict) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import os
    n2 = [row for row in r["rows"] if row.get("n") == 2 and row.get("k") == 1]
    if not n2:
        return None
    base = next(row for row in r["rows"] if row["arm"] == "baseline")
    xs = [row["m"] for row in n2]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label, c in (("step", "train step", "C0"), ("fwd_bwd", "fwd+bwd only", "C1")):
        ax.plot(xs, [1e3 * row[key]["median_s"] for row in n2], "o-", color=c,
                label=f"OE n=2,k=1 {label}")
        ax.axhline(1e3 * base[key]["median_s"], color=c, ls="--", lw=1,
                   label=f"baseline {label}")
    for row in r["rows"]:
        if row.get("n") == 3:
            ax.plot([row["m"]], [1e3 * row["step"]["median_s"]], "s", color="C2",
                    label=f"OE n=3,k=2 step (m={row['m']})")
    ax.set_xscale("log")
    ax.set_xlabel("m (rows per slice table)")
    ax.set_ylabel("ms (median)")
    ax.set_title(f"Over-encoding step time vs m, d={r['model']['d_model']}, "
                 f"{r['device_kind']}")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
