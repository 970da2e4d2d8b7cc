"""Recurrent cells on a character corpus: a searched cell against random cells, an LSTM and
a GRU, all retrained under one protocol; validation bits per character.

Every row trains with the same loop (`LanguageTrainer`: SGD at lr 20, clip 0.25, AR/TAR,
variable-length BPTT, NT-ASGD), the same epochs, windows, batch and dropout, and reports
the validation split's bits per character. The recurrent cells are 128 wide; the LSTM and
GRU take the width that matches the cells' parameter count (weight tying keeps their
embedding as wide as their state). One JSON line per trained model, then one line per row
with its mean:

    python benchmarks/rnn_quality.py --data ../shared/data/tinyshakespeare.txt \\
        --genotype darts=RUN/genotype.json --genotype enas=RUN2/genotype.json \\
        --random 8 --seeds 0,1,2 --epochs 2 --out /tmp/rnn_quality.jsonl

`--out` keeps the finished models' lines, so a killed benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from common import environment
from flax import nnx

from nasax.core.config import validate_config
from nasax.loop.optim import weight_optimizer, weight_schedule
from nasax.loop.text import batchify, evaluate_stream, load_text, padded_window
from nasax.supernet.genotypes import Genotype, load_genotype
from nasax.supernet.rnn_cells import INIT_RANGE, masked, uniform_init
from nasax.supernet.rnn_network import Dropouts, LMOutput, RNNModel, dropout_mask
from nasax.train.lm_trainer import (
    Averaging,
    LanguageTrainer,
    WindowPlan,
    eval_params,
    nonmono_switch,
)

ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity")
"""The ops a derived DARTS recurrent cell may hold."""


def random_genotype(rng: np.random.Generator, nodes: int = 8) -> Genotype:
    """A uniformly random cell of darts_rnn: per node one earlier state and one activation."""
    cell = [[[str(rng.choice(ACTIVATIONS)), int(rng.integers(0, i + 1))]] for i in range(nodes)]
    data = {"space": "darts_rnn", "recurrent": cell, "recurrent_concat": list(range(1, nodes + 1))}
    return Genotype.from_dict(data).validate()


class GatedLM(nnx.Module):
    """An LSTM or GRU language model with the recurrent skeleton's embedding, tied decoder
    and dropouts (locked on embeddings and outputs, one mask per sequence on the cell's
    input and state), for baselines: ``model(tokens, hidden, train=, rng=, valid=)``.
    An LSTM's carried state is [h, c] side by side."""

    def __init__(
        self, kind: str, *, vocab_size: int, size: int, dropouts: Dropouts, rngs: nnx.Rngs
    ):
        cell = {"lstm": nnx.LSTMCell, "gru": nnx.GRUCell}[kind]
        self.cell = cell(size, size, rngs=rngs)
        self.embedding = nnx.Param(uniform_init(rngs.params(), (vocab_size, size)))
        self.bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32))
        self.kind, self.size, self.dropouts, self.vocab_size = kind, size, dropouts, vocab_size
        self.hidden_size = 2 * size if kind == "lstm" else size

    def __call__(
        self,
        tokens: jax.Array,
        hidden: jax.Array | None = None,
        *,
        train: bool = False,
        rng: jax.Array | None = None,
        valid: jax.Array | None = None,
    ) -> LMOutput:
        b, n = tokens.shape
        hidden = jnp.zeros((b, self.hidden_size)) if hidden is None else hidden
        d = self.dropouts
        keys = jax.random.split(rng, 5) if train and rng is not None else None

        def mask(i: int, rate: float, shape: tuple[int, ...]) -> jax.Array | None:
            return None if keys is None else dropout_mask(keys[i], rate, shape)

        table = self.embedding[...]
        x = table[tokens]
        words = mask(0, d.words, (self.vocab_size, 1))
        if words is not None:
            x = x * words[tokens]
        x = masked(x, mask(1, d.embedding, (b, 1, self.size)))
        x_mask, h_mask = mask(2, d.cell_input, (b, self.size)), mask(3, d.hidden, (b, self.size))
        valid = jnp.ones((b, n)) if valid is None else valid
        graphdef, state = nnx.split(self.cell)

        def step(carry: jax.Array, inputs: tuple[jax.Array, jax.Array]) -> tuple:
            x_t, real = inputs
            cell = nnx.merge(graphdef, state)
            if self.kind == "lstm":
                h, c = jnp.split(carry, 2, axis=-1)
                (c2, h2), _ = cell((c, masked(h, h_mask)), masked(x_t, x_mask))
                new = jnp.concatenate([h2, c2], axis=-1)
            else:
                h2, _ = cell(masked(carry, h_mask), masked(x_t, x_mask))
                new = h2
            new = jnp.where(real[:, None] > 0, new, carry)
            return new, new[:, : self.size]

        last, raw = jax.lax.scan(step, hidden, (jnp.swapaxes(x, 0, 1), valid.T))
        raw = jnp.swapaxes(raw, 0, 1)
        out = masked(raw, mask(4, d.output, (b, 1, self.size)))
        return LMOutput(out @ table.T + self.bias[...], last, raw, out)


def param_count(network: Any) -> int:
    model = nnx.eval_shape(lambda: network(nnx.Rngs(0)))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def matched_size(kind: str, target: int, vocab: int, dropouts: Dropouts) -> int:
    """The LSTM or GRU width whose model has the parameter count closest to `target`."""

    def count(size: int) -> int:
        return param_count(
            lambda rngs: GatedLM(kind, vocab_size=vocab, size=size, dropouts=dropouts, rngs=rngs)
        )

    return min(range(16, 1024), key=lambda s: abs(count(s) - target))


def train_one(network: Any, hidden_size: int, corpus: Any, config: Any, seed: int) -> dict:
    """Trains one model under the protocol; the validation figures after the last epoch."""
    t, text, w = config.train, config.text, config.optim.weights
    train = batchify(corpus.train, t.batch_size)
    valid = batchify(corpus.valid, text.eval_batch_size)
    plan = WindowPlan.of(train.shape[1], text.bptt, t.epochs, seed, text.variable_length)
    trainer = LanguageTrainer.create(
        network,
        optimizer=weight_optimizer(w, t.epochs, plan.steps),
        learning_rate=weight_schedule(w, t.epochs, plan.steps),
        bptt=text.bptt,
        activation_reg=text.activation_reg,
        temporal_reg=text.temporal_reg,
        batch_size=t.batch_size,
        hidden_size=hidden_size,
        epochs=t.epochs,
    )
    state = trainer.init(jax.random.PRNGKey(seed))
    step = jax.jit(trainer.step, donate_argnums=0)
    evaluate = jax.jit(trainer.evaluate)
    history: list[float] = []
    tick = time.perf_counter()
    for epoch in range(t.epochs):
        for window in plan.windows(epoch):
            state, metrics = step(state, padded_window(train, window, anchor=text.bptt))
        loss = float(metrics["train_loss"])
        if not math.isfinite(loss):
            return {"error": f"non-finite training loss at epoch {epoch + 1}"}
        val = evaluate_stream(
            evaluate, eval_params(state), valid, text.bptt, hidden_size, corpus.level
        )
        on = bool(state.averaging.on)
        switch = not on and nonmono_switch(history, val["loss"], text.nonmono)
        history.append(val["loss"])
        state = state._replace(
            hidden=jnp.zeros_like(state.hidden),
            averaging=Averaging.start(state.params) if switch else state.averaging,
        )
    return {
        "val_bpc": val["bpc"],
        "val_loss": val["loss"],
        "val_acc": val["accuracy"],
        "train_seconds": time.perf_counter() - tick,
        "averaged": bool(state.averaging.on),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a UTF-8 text file (characters)")
    parser.add_argument("--genotype", action="append", default=[], help="NAME=genotype.json")
    parser.add_argument("--random", type=int, default=8, help="random cells of darts_rnn")
    parser.add_argument("--random-seeds", default="0", help="seeds of each random cell")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the other rows")
    parser.add_argument("--baselines", default="lstm,gru")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--size", type=int, default=128, help="the cells' width")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    config = validate_config(
        {
            "data": {"name": f"text:{args.data}"},
            "model": {"space": "darts_rnn"},
            "train": {"epochs": args.epochs, "batch_size": args.batch},
            "text": {
                "embed_size": args.size,
                "hidden_size": args.size,
                "bptt": 35,
                "eval_batch_size": 64,
                "valid_fraction": 0.1,
                "dropout": {
                    "output": 0.25,
                    "hidden": 0.1,
                    "cell_input": 0.25,
                    "embedding": 0.1,
                    "words": 0.0,
                },
            },
            "optim": {
                "weights": {
                    "lr": 20.0,
                    "momentum": 0.0,
                    "weight_decay": 1.2e-6,
                    "grad_clip": 0.25,
                    "schedule": "constant",
                }
            },
        }
    )
    corpus = load_text(args.data, valid_fraction=0.1)
    dropouts = Dropouts(**config.text.dropout.model_dump())

    def cell_network(genotype: Genotype) -> Any:
        return lambda rngs: RNNModel(
            genotype,
            vocab_size=corpus.vocab_size,
            embed_size=args.size,
            hidden_size=args.size,
            dropouts=dropouts,
            rngs=rngs,
        )

    jobs: list[tuple[str, str, int, Any, int]] = []  # row, model, seed, network, hidden
    for spec in args.genotype:
        name, _, path = spec.partition("=")
        genotype = load_genotype(path)
        for seed in map(int, args.seeds.split(",")):
            jobs.append((name, genotype.to_arch_string(), seed, cell_network(genotype), args.size))
    rng = np.random.default_rng(1234)
    for _ in range(args.random):
        genotype = random_genotype(rng)
        for seed in map(int, args.random_seeds.split(",")):
            jobs.append(
                ("random", genotype.to_arch_string(), seed, cell_network(genotype), args.size)
            )
    target = param_count(cell_network(load_genotype("DARTS_RNN_V2")))
    for kind in filter(None, args.baselines.split(",")):
        size = matched_size(kind, target, corpus.vocab_size, dropouts)

        def network(rngs: nnx.Rngs, kind: str = kind, size: int = size) -> GatedLM:
            return GatedLM(
                kind, vocab_size=corpus.vocab_size, size=size, dropouts=dropouts, rngs=rngs
            )

        hidden = 2 * size if kind == "lstm" else size
        for seed in map(int, args.seeds.split(",")):
            jobs.append((kind, f"{kind}-{size}", seed, network, hidden))

    done = {}
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            rec = json.loads(line)
            done[(rec["row"], rec["model"], rec["seed"])] = rec
    for row, model, seed, network, hidden in jobs:
        if (row, model, seed) in done:
            continue
        record = {
            "bench": "rnn_quality",
            "row": row,
            "model": model,
            "seed": seed,
            "params": param_count(network),
            "epochs": args.epochs,
            **train_one(network, hidden, corpus, config, seed),
        }
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        done[(row, model, seed)] = record
        print(json.dumps(record), flush=True)
    rows: dict[str, list[float]] = {}
    for rec in done.values():
        if "val_bpc" in rec:
            rows.setdefault(rec["row"], []).append(rec["val_bpc"])
    for row, values in rows.items():
        summary = {
            "bench": "rnn_quality",
            "row": row,
            "mean_val_bpc": float(np.mean(values)),
            "std_val_bpc": float(np.std(values)),
            "models": len(values),
            "init_range": INIT_RANGE,
            **environment(),
        }
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
