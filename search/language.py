"""Searching recurrent cells: language-model search on text with the image search's strategies.

The supernet is the recurrent skeleton's language model (`RNNSearchModel`) in a wrapper
that carries each stream's hidden state from window to window (`CarriedSearchModel`), so
a strategy's step, written for image batches, runs unchanged on BPTT windows. What
differs is said here once: the network's input (a window with its mask of real steps),
the masked loss, and evaluation that walks the validation split carrying the state.

As in the DARTS reference (rnn/train_search.py) the weight and architecture steps read
two streams of windows of the same drawn length, each carrying its own hidden state from
an epoch's start; unlike it, the two streams are the two halves of the training split
(`search.train_portion`, the image search's protocol), so the validation split stays
untouched by the search and reports it. Departures: the learning rate is not rescaled by
each window's length, and the search step has no temporal activation regularisation (the
reference's weight 1e-3); every training window is
padded to the longest a draw can be (`window_capacity`), the padded steps skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nasax.core.config import Config
from nasax.core.errors import ConfigError, DataError
from nasax.loop.data import Batch
from nasax.loop.optim import (
    arch_lr_ratio,
    arch_optimizer,
    weight_lr_ratio,
    weight_optimizer,
    weight_schedule,
)
from nasax.loop.run import RunContext
from nasax.loop.runloop import guard_step, prefetch
from nasax.loop.text import (
    TextCorpus,
    Window,
    batchify,
    bptt_windows,
    evaluate_stream,
    load_corpus,
    padded_window,
    window_capacity,
)
from nasax.search.single_path import genotype_paths
from nasax.search.strategy import (
    FunctionalSupernet,
    Metrics,
    SearchSetup,
    SupernetState,
)
from nasax.search.task import SearchFields, SearchRun, SearchTask, _with_paths
from nasax.supernet.network import PLAIN_FORWARD, Forward
from nasax.supernet.rnn_network import CarriedSearchModel, Dropouts, RNNSearchModel
from nasax.supernet.spaces import get_space

TEXT_STRATEGIES = ("darts", "beta_darts", "gdas", "snas", "drnas", "random_ws", "enas")
"""The strategies that search recurrent cells: those whose supernet is the plain mixed or
single-path one (PC-DARTS' partial channels, SDARTS' perturbations and the budgets are
image-network transforms; evolution and zero_cost score image cells)."""

WEIGHT_STREAM, ARCH_STREAM = 0, 1
"""The carried hidden state of each stream of training windows."""


class LanguageSupernet(FunctionalSupernet):
    """The functional view of a language-model supernet: losses and counts over the real
    steps of a window, and evaluation that carries the hidden state in the batch."""

    def batch_metrics(
        self, logits: jax.Array, x: Any, labels: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Mean cross-entropy and next-token accuracy over the window's real steps."""
        valid = x["valid"]
        n = jnp.maximum(jnp.sum(valid), 1.0)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return jnp.sum(losses * valid) / n, jnp.sum(correct * valid) / n

    def hits(self, logits: jax.Array, x: Any, labels: jax.Array) -> jax.Array:
        return jnp.sum((jnp.argmax(logits, -1) == labels) * x["valid"])

    def count(self, batch: Batch) -> jax.Array:
        return jnp.sum(batch["valid"])

    def evaluate(
        self, state: SupernetState, batch: Batch, forward: Forward = PLAIN_FORWARD
    ) -> Metrics:
        """Summed loss and correct count over the window's real steps, from the batch's
        `hidden`, and the hidden state after it (`hidden`) for the next window. A single
        path normalises with the batch's statistics, as the image scorers do."""
        model = nnx.merge(self.graphdef, state.arch, state.params, state.batch_stats, copy=True)
        out = model.lm(
            batch["tokens"],
            batch["hidden"],
            train=forward.paths is not None,
            dropout=False,
            weights=forward.weights,
            paths=forward.paths,
            valid=batch["valid"],
        )
        valid = batch["valid"]
        losses = optax.softmax_cross_entropy_with_integer_labels(out.logits, batch["label"])
        correct = (jnp.argmax(out.logits, -1) == batch["label"]).astype(jnp.float32)
        return {
            "loss_sum": jnp.sum(losses * valid),
            "correct": jnp.sum(correct * valid),
            "count": jnp.sum(valid),
            "hidden": out.hidden,
        }


def window_input(batch: Batch, rng: jax.Array, train: bool) -> dict[str, Any]:
    """The supernet's input from a window batch: dropout keyed by `rng` in training only."""
    x = {k: batch[k] for k in ("tokens", "valid", "stream", "reset")}
    x["rng"] = rng if train else None
    return x


def language_setup(config: Config, corpus: TextCorpus, steps_per_epoch: int) -> SearchSetup:
    """The search setup of a recurrent space on `corpus`, as `build_setup` makes the image
    one: the carried supernet, the optimizers of the config, the window input."""
    space = get_space(config.model.space)
    text, epochs = config.text, config.search.epochs
    dropouts = Dropouts(**config.text.dropout.model_dump())

    def network(rngs: nnx.Rngs, **options: Any) -> CarriedSearchModel:
        if options:  # a strategy's image-network transform (partial channels, ...)
            raise ConfigError(
                f"search.strategy {config.search.strategy!r} transforms the supernet "
                f"({', '.join(options)}), which recurrent cells do not have; recurrent "
                f"cells search with {', '.join(TEXT_STRATEGIES)}"
            )
        model = RNNSearchModel(
            space,
            vocab_size=corpus.vocab_size,
            embed_size=text.embed_size,
            hidden_size=text.hidden_size,
            dropouts=dropouts,
            batch_norm=text.batch_norm,
            tie_weights=text.tie_weights,
            rngs=rngs,
        )
        return CarriedSearchModel(model, batch_size=config.search.batch_size)

    return SearchSetup(
        space=space,
        network=network,
        weight_optimizer=weight_optimizer(config.optim.weights, epochs, steps_per_epoch),
        arch_optimizer=arch_optimizer(config.optim.arch, epochs * steps_per_epoch),
        learning_rate=weight_schedule(config.optim.weights, epochs, steps_per_epoch),
        preprocess=window_input,
        max_skip_connect=None,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        jit=jax.jit,
        arch_lr_ratio=arch_lr_ratio(config.optim.arch, steps_per_epoch, epochs),
        weight_lr_ratio=weight_lr_ratio(config.optim.weights, epochs, steps_per_epoch),
        functional=LanguageSupernet,
    )


class LanguageSearchPlan(NamedTuple):
    """A language-model search's sizes and its token streams, batchified (rows, steps)."""

    epochs: int
    batch_size: int
    steps_per_epoch: int
    eval_every: int
    weight_stream: np.ndarray
    arch_stream: np.ndarray
    valid_stream: np.ndarray
    budget: None = None


class LanguageSearchTask(SearchTask):
    """A strategy's search of a recurrent cell on text: weight steps on windows of one half
    of the training split, architecture steps on windows of the other, the validation
    split's loss, perplexity and bits per character at evaluation epochs."""

    shown = ("train_loss", "val_loss", "val_acc", "images_per_sec")

    def resolve(self, config: Config) -> Config:
        config = super().resolve(config)
        search = config.search
        if search.strategy not in TEXT_STRATEGIES:
            raise ConfigError(
                f"search.strategy {search.strategy!r} does not search recurrent cells; use "
                f"one of {', '.join(TEXT_STRATEGIES)}"
            )
        if search.cost is not None:
            raise ConfigError(
                "search.cost: budgets price image networks; a recurrent search takes none "
                "(drop search.cost)"
            )
        return config

    def load_data(self, config: Config) -> TextCorpus:
        text = config.text
        return load_corpus(
            config.data.name, valid_fraction=text.valid_fraction, test_fraction=text.test_fraction
        )

    def prepare(
        self, config: Config, dataset: Any, workdir: Path, resume: bool
    ) -> LanguageSearchPlan:
        corpus: TextCorpus = dataset
        s, text = config.search, config.text
        split = int(len(corpus.train) * s.train_portion)
        halves = {"weight": corpus.train[:split], "architecture": corpus.train[split:]}
        streams = {}
        for half, tokens in halves.items():
            try:
                streams[half] = batchify(tokens, s.batch_size)
            except DataError as e:
                raise DataError(
                    f"{corpus.name}: the {half}-step half of the training split: {e}"
                ) from None
        valid = batchify(corpus.valid, text.eval_batch_size)
        steps = (streams["weight"].shape[1] - 1) // text.bptt
        if steps < 1:
            raise DataError(
                f"{corpus.name}: the weight-step half has {streams['weight'].shape[1]} tokens "
                f"per row at search.batch_size={s.batch_size}, less than one window of "
                f"text.bptt={text.bptt}; lower one of them"
            )
        return LanguageSearchPlan(
            s.epochs,
            s.batch_size,
            steps,
            s.eval_every,
            streams["weight"],
            streams["architecture"],
            valid,
        )

    def build(self, ctx: RunContext, plan: LanguageSearchPlan) -> LanguageSearchRun:
        return LanguageSearchRun(self, ctx, plan)


class LanguageSearchRun(SearchRun):
    """One language-model search: the image search's run with windows for batches."""

    plan: LanguageSearchPlan

    def __init__(self, task: LanguageSearchTask, ctx: RunContext, plan: LanguageSearchPlan):
        super().__init__(task, ctx, plan)
        self.last_test: dict[str, float] = {}

    @property
    def corpus(self) -> TextCorpus:
        return self.ctx.dataset  # type: ignore[return-value]

    def build_setup(self) -> SearchSetup:
        return language_setup(self.config, self.corpus, self.plan.steps_per_epoch)

    def describe(self) -> str:
        plan, bptt = self.plan, self.config.text.bptt
        return (
            f"{self.corpus.name}: {plan.weight_stream.size} + {plan.arch_stream.size} search "
            f"tokens ({self.corpus.vocab_size} symbols), {plan.steps_per_epoch} windows of "
            f"about {bptt} per epoch"
        )

    def _build_programs(self, state: Any, key: str) -> tuple[Any, Any, Any]:
        """(step, evaluate, evaluate one cell); the step compiled now, for the one padded
        length of every training window."""
        rc = self.config.run
        step = None
        if self.epochs:
            jitted = jax.jit(guard_step(self.strategy.step, rc), donate_argnums=0)
            bptt = min(self.config.text.bptt, self.plan.weight_stream.shape[1] - 1)
            sample = self._window(WEIGHT_STREAM, Window(0, bptt), True, self.window_length)
            step = jitted.lower(state, sample, sample).compile()
        cell = self.strategy.evaluate_cell
        return step, jax.jit(self.strategy.evaluate), None if cell is None else jax.jit(cell)

    @property
    def window_length(self) -> int:
        """The padded length of every training window (`window_capacity`)."""
        text = self.config.text
        return window_capacity(text.bptt, text.variable_length)

    def _window(self, stream: int, window: Window, reset: bool, length: int | None = None) -> Batch:
        """A window of a stream as a host batch, padded to `length` steps (default: none)."""
        data = self.plan.weight_stream if stream == WEIGHT_STREAM else self.plan.arch_stream
        batch = padded_window(data, window, length or window.length)
        rows = data.shape[0]
        batch["stream"] = np.full(rows, stream, np.int32)
        batch["reset"] = np.full(rows, float(reset), np.float32)
        return batch

    def epoch_windows(self, epoch: int) -> list[tuple[Window, Window, bool, bool]]:
        """Each step's (weight window, architecture window, whether each stream starts
        over) in `epoch`: as many steps as every epoch has, lengths drawn per epoch (the
        same on resume), both streams read in order from the epoch's start, a stream that
        runs out starting over (from a fresh hidden state)."""
        text, plan = self.config.text, self.plan
        rng = np.random.default_rng([self.config.seed, epoch]) if text.variable_length else None
        n_weight, n_arch = plan.weight_stream.shape[1], plan.arch_stream.shape[1]
        lengths = [w.length for w in bptt_windows(n_weight, text.bptt, rng)]
        lengths = (lengths * (1 + plan.steps_per_epoch // max(len(lengths), 1)))[
            : plan.steps_per_epoch
        ]
        steps, starts = [], [0, 0]
        for length in lengths:
            windows, resets = [], []
            for s, n in enumerate((n_weight, n_arch)):
                if starts[s] >= n - 2:  # no full target left: start over
                    starts[s] = 0
                resets.append(starts[s] == 0)
                windows.append(Window(starts[s], min(length, n - 1 - starts[s])))
                starts[s] += windows[-1].length
            steps.append((windows[0], windows[1], resets[0], resets[1]))
        return steps

    def epoch_batches(self, epoch: int, first: int) -> Iterator[tuple[Batch, Batch]]:
        put, length = self.ctx.dp.put_batch, self.window_length

        def pairs() -> Iterator[Batch]:
            for i, (w, a, w_reset, a_reset) in enumerate(self.epoch_windows(epoch)):
                if i >= first:
                    train = self._window(WEIGHT_STREAM, w, w_reset, length)
                    val = self._window(ARCH_STREAM, a, a_reset, length)
                    yield {"train": train, "val": val}

        for both in prefetch(pairs(), put=lambda b: {k: put(v) for k, v in b.items()}):
            yield both["train"], both["val"]

    def test(self, state: Any) -> dict[str, float]:  # type: ignore[override]
        """Loss (nats per token) and next-token accuracy on the validation split, windows
        of `bptt` in order with the hidden state carried: of the selected cell where the
        strategy runs one cell, else of the supernet."""
        fn = self.eval_fn
        if self.cell_eval_fn is not None and self.genotype is not None:
            paths = genotype_paths(self.genotype, self.setup.space)
            fn = partial_paths(self.cell_eval_fn, paths)
        text = self.config.text
        result = evaluate_stream(
            with_hidden(fn),
            state,
            self.plan.valid_stream,
            text.bptt,
            text.hidden_size,
            self.corpus.level,
        )
        self.last_test = dict(result)
        return self.last_test

    def test_line(self, test: dict[str, float]) -> str:
        shown = ", ".join(f"{k} {test[k]:.3f}" for k in ("ppl", "bpc") if test.get(k) is not None)
        return f", {shown}" + super().test_line(test)

    def _select_batches(self) -> Iterator[Batch]:
        """The architecture half in `bptt` windows, in order, each from a fresh state."""
        bptt, n = self.config.text.bptt, self.plan.arch_stream.shape[1]
        for window in bptt_windows(n, bptt):
            if window.length == bptt:
                yield self.ctx.dp.put_batch(self._window(ARCH_STREAM, window, True))

    def _phase_batches(self, epoch: int) -> Iterator[Batch]:
        """Architecture-half windows for a strategy's after-epoch phase (ENAS' controller),
        reshuffled per pass, each from a fresh state."""
        bptt, n = self.config.text.bptt, self.plan.arch_stream.shape[1]
        windows = [w for w in bptt_windows(n, bptt) if w.length == bptt]
        sweep = 0
        while True:
            order = np.random.default_rng([self.config.seed, epoch, sweep]).permutation(
                len(windows)
            )
            for i in order:
                yield self.ctx.dp.put_batch(self._window(ARCH_STREAM, windows[i], True))
            sweep += 1

    def summary(self, state: Any) -> SearchFields:
        fields = dict(super().summary(state))
        test = self.last_test or self.test(state)
        fields.update({f"test_{k}": test[k] for k in ("ppl", "bpc")})
        fields["vocab_size"] = self.corpus.vocab_size
        return fields  # type: ignore[return-value]


def with_hidden(eval_fn: Callable[[Any, Batch], Metrics]) -> Callable[..., tuple]:
    """A supernet evaluation `(state, batch with its hidden) -> sums and hidden` in the
    form `evaluate_stream` calls: `(state, hidden, batch) -> (sums, hidden)`."""

    def call(state: Any, hidden: jax.Array, batch: Batch) -> tuple[Metrics, jax.Array]:
        sums = dict(eval_fn(state, {**batch, "hidden": hidden}))
        return sums, sums.pop("hidden")

    return call


def partial_paths(cell_eval_fn: Callable, paths: dict[str, np.ndarray]) -> Callable:
    """`cell_eval_fn` with its cell fixed to `paths`, as (state, batch) -> sums."""
    fixed = {k: jnp.asarray(p) for k, p in paths.items()}
    return lambda state, batch: _with_paths(cell_eval_fn, fixed, state, batch)


__all__ = [
    "TEXT_STRATEGIES",
    "LanguageSearchTask",
    "LanguageSupernet",
    "language_setup",
    "window_input",
]
