"""The language-modelling task of the trainer (``config.task = "lm"``, the default).

A task tells ``seedjax.train.loop.Trainer`` what to build and how to report it; the loop itself
(state, steps, checkpoints, hooks, signals) is task-agnostic. Task interface:

    model_fn() -> nnx.Module                   the model, initialised from train.seed
    data                                       train_iter, val_batches(), get_state()/set_state(),
                                               steps_per_epoch
    objective                                  ``loss(model, batch, step[, rng])`` (step.py)
    eval_sums(model, batch) -> {name: sum}     summed over a val batch (model in eval mode)
    report(sums) -> {name: float}              val metrics from the summed eval sums
    unit, items_per_step, flops_per_step       throughput: "<unit>_per_s" and MFU
    ema_decay                                  params EMA in the train state (0: none)
    data_diagnostics(total_steps) -> dict      logged at step 0 (may be empty)
    seen_batches(n) -> list | None             train batches for the seen-vs-val loss, or None

LM: a decoder LM (``LMConfig`` from ``config.model``) on token windows (``build_lm_data``);
val "loss" is nats per token plus bits per byte.
"""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from seedjax.data import build_lm_data
from seedjax.models import LM, LMConfig, lookup
from seedjax.train import flops as flops_lib
from seedjax.train.objectives import eval_sums, make_objective
from seedjax.train.step import bits_per_byte


class LMTask:
    unit = "tokens"

    def __init__(self, config, workdir: str, *, data: bool = True):
        """``data=False``: no data pipeline (``self.data`` None), for compile checks and plans."""
        tc = config.train
        self.ema_decay = float(tc.get("ema_decay", 0.0))
        self.model_cfg = LMConfig.from_dict(config.model)
        self.seq_len, self.batch_size = int(config.data.seq_len), int(config.data.batch_size)
        if self.seq_len > self.model_cfg.max_seq_len:
            raise ValueError(f"data.seq_len={self.seq_len} exceeds model.max_seq_len="
                             f"{self.model_cfg.max_seq_len}")
        seed = int(tc.seed)
        self.model_fn = lambda: LM(self.model_cfg, rngs=nnx.Rngs(seed))
        self.objective = make_objective(tc.get("objective", "lm"),
                                        dict(tc.get("objective_kwargs") or {}),
                                        stack=self.model_cfg.stack)
        self.data = None if not data else build_lm_data(
            source=config.data.source, seq_len=self.seq_len, batch_size=self.batch_size,
            seed=seed, val_fraction=float(config.data.val_fraction),
            max_val_batches=int(config.data.max_val_batches),
            process_index=jax.process_index(), process_count=jax.process_count(),
            tokenizer=config.data.get("tokenizer", "byte"),
            vocab_size=int(config.data.get("vocab_size", 4096)), workdir=workdir,
            model_vocab_size=self.model_cfg.vocab_size)
        self.items_per_step = self.seq_len * self.batch_size
        flops_per_token = flops_lib.lm_train_flops_per_token(
            self.model_cfg, self.seq_len,
            backward=getattr(self.objective, "backward_through_model", True))
        self.flops_per_step = flops_per_token * self.items_per_step

    eval_sums = staticmethod(eval_sums)

    def batch_shapes(self) -> dict:
        """The global train batch as ShapeDtypeStructs: inputs / targets int32 [B, T]."""
        s = jax.ShapeDtypeStruct((self.batch_size, self.seq_len), np.int32)
        return {"inputs": s, "targets": s}

    def report(self, sums: dict) -> dict:
        """Mean CE per token ("loss"), bits/byte, token count, every other sum per token."""
        sums = dict(sums)
        n = sums.pop("tokens", 0.0)
        loss = sums.pop("ce_sum", 0.0) / max(n, 1.0)
        extra = {k: v / max(n, 1.0) for k, v in sums.items()}
        bpb = bits_per_byte(loss, self.data.val_tokens_per_byte)  # 1 token/byte for bytes
        return {"loss": loss, "bits_per_byte": bpb, "tokens": n, **extra}

    def seen_batches(self, n: int) -> list:
        return self.data.seen_batches(n)

    def data_diagnostics(self, total_steps: int) -> dict:
        """The embed factory's optional ``data_diagnostics(cfg, tokens)`` on the train tokens one
        pass of this run reads (e.g. over-encoding's table hits and collisions)."""
        fn = getattr(lookup("embed", self.model_cfg.embed), "data_diagnostics", None)
        stream = self.data.train_stream
        if fn is None or stream is None:
            return {}
        n = min(len(stream), total_steps * self.batch_size * (self.seq_len + 1))
        return fn(self.model_cfg, np.asarray(stream[:n]))
