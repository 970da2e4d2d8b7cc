"""A recurrent genotype's language model as pure functions over an explicit state: init,
one jitted step over a BPTT window, evaluation of a stream; NT-ASGD's average; the
vocabulary a run stores."""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nasax.core.config import Config
from nasax.core.errors import DataError, RunDirError
from nasax.core.io import atomic_write_json
from nasax.loop.data import Batch
from nasax.loop.optim import weight_optimizer, weight_schedule
from nasax.loop.text import (
    EOS,
    UNK,
    TextCorpus,
    Window,
    bptt_windows,
)
from nasax.supernet.genotypes import Genotype
from nasax.supernet.rnn_network import Dropouts, RNNModel

Metrics = dict[str, jax.Array]

VOCAB_FORMAT = "nasax-vocab"
VOCAB_VERSION = 1

# ------------------------------------------------------------------ vocabulary


@dataclass(frozen=True)
class Vocabulary:
    """The tokens a language model reads and writes, as its run stores them (`vocab.json`).

    Attributes:
        level: "char" (a token is a character) or "word" (whitespace-separated words;
            `<eos>` ends a line).
        tokens: the token of each id.
        data: the data name the vocabulary came from.
    """

    level: Literal["char", "word"]
    tokens: tuple[str, ...]
    data: str = ""

    @classmethod
    def of(cls, corpus: TextCorpus) -> Vocabulary:
        return cls(corpus.level, tuple(corpus.vocab), corpus.name)

    def __len__(self) -> int:
        return len(self.tokens)

    @cached_property
    def ids(self) -> dict[str, int]:
        return {token: i for i, token in enumerate(self.tokens)}

    def encode(self, text: str, what: str = "the prompt") -> np.ndarray:
        """int32 ids of `text` (characters, or words); an unknown word becomes `<unk>`
        where the vocabulary has one, anything else unknown is a one-line DataError."""
        pieces = list(text) if self.level == "char" else text.split()
        unk = self.ids.get(UNK)
        unknown = [p for p in pieces if p not in self.ids]
        if unknown and unk is None:
            kind = "character" if self.level == "char" else "word"
            raise DataError(
                f"{what} has the {kind} {unknown[0]!r}, which is not among the {len(self)} "
                f"{kind}s of the model's vocabulary ({self.data or 'vocab.json'})"
            )
        return np.array([self.ids.get(p, unk) for p in pieces], np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of token ids: characters joined; words joined by spaces, `<eos>` as a
        line break."""
        if self.level == "char":
            return "".join(self.tokens[int(i)] for i in ids)
        text = " ".join(self.tokens[int(i)] for i in ids)
        return text.replace(f" {EOS} ", "\n").replace(f" {EOS}", "\n").replace(EOS, "\n")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": VOCAB_FORMAT,
            "version": VOCAB_VERSION,
            "level": self.level,
            "data": self.data,
            "tokens": list(self.tokens),
        }

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """The vocabulary a run or an exported model stored; RunDirError if it is not one."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{path} is missing (a language model's vocabulary)") from None
        except (ValueError, OSError) as e:
            raise RunDirError(f"{path} is not a vocabulary: {e}") from None
        if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT:
            raise RunDirError(f"{path} is not a nasax vocabulary (format {VOCAB_FORMAT!r})")
        if data.get("version") != VOCAB_VERSION or data.get("level") not in ("char", "word"):
            raise RunDirError(
                f"{path}: version {data.get('version')!r} level {data.get('level')!r}, expected "
                f"version {VOCAB_VERSION} and level char or word"
            )
        return cls(data["level"], tuple(data["tokens"]), data.get("data", ""))


def check_same_vocabulary(saved: Vocabulary, given: Vocabulary, run_dir: Path) -> None:
    """DataError unless the data's vocabulary (`given`) is the one the run in `run_dir`
    was started with."""
    if (saved.level, saved.tokens) == (given.level, given.tokens):
        return
    if saved.level != given.level:
        detail = f"it is {given.level}-level, the run {saved.level}-level"
    else:
        pairs = zip(saved.tokens, given.tokens)
        first = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
        if first is None:
            detail = f"{len(given)} tokens against the run's {len(saved)}"
        else:
            detail = (
                f"token {first} is {given.tokens[first]!r}, the run's is {saved.tokens[first]!r}"
            )
    raise DataError(
        f"{given.data}: its vocabulary differs from the one in {run_dir / 'vocab.json'} "
        f"({detail}); use the data the run started with ({saved.data})"
    )


# ------------------------------------------------------------------ NT-ASGD


def nonmono_switch(previous: Sequence[float], val_loss: float, nonmono: int) -> bool:
    """NT-ASGD's trigger (Merity et al. 2018; DARTS' rnn/train.py): switch to averaging
    when `val_loss` is worse than the best of the `previous` validation losses except the
    last `nonmono` of them (and there are more than `nonmono`)."""
    return len(previous) > nonmono and val_loss > min(previous[:-nonmono])


class Averaging(NamedTuple):
    """NT-ASGD's state: whether averaging is on, the running mean of the weights after
    each step since it began, and how many steps that mean holds."""

    on: jax.Array
    """bool scalar."""
    params: nnx.State
    count: jax.Array
    """int32 scalar."""

    @classmethod
    def off(cls, params: nnx.State) -> Averaging:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return cls(jnp.zeros((), bool), zeros, jnp.zeros((), jnp.int32))

    @classmethod
    def start(cls, params: nnx.State) -> Averaging:
        """Averaging switched on: the mean of no step yet (the next step's weights are the
        first of it)."""
        copy = jax.tree.map(jnp.array, params)
        return cls(jnp.ones((), bool), copy, jnp.zeros((), jnp.int32))

    def add(self, params: nnx.State) -> Averaging:
        """The mean with `params` added, when averaging is on."""
        count = self.count + self.on.astype(jnp.int32)
        weight = 1.0 / jnp.maximum(count, 1).astype(jnp.float32)

        def mean(avg: jax.Array, p: jax.Array) -> jax.Array:
            updated = jnp.where(count == 1, p, avg + (p - avg) * weight)
            return jnp.where(self.on, updated, avg)

        return Averaging(self.on, jax.tree.map(mean, self.params, params), count)


# ------------------------------------------------------------------ the trainer


class LMState(NamedTuple):
    """Everything a language-model retraining needs to continue exactly."""

    step: jax.Array
    rng: jax.Array
    params: nnx.State
    opt: optax.OptState
    hidden: jax.Array
    """(batch, hidden) the state the next training window starts from (zeros at an epoch's
    start)."""
    averaging: Averaging
    val_losses: jax.Array
    """(epochs,) float32: the validation loss after each epoch, inf where not yet run; the
    NT-ASGD trigger reads it."""


class LossParts(NamedTuple):
    """A window's loss: the mean next-token cross-entropy over its real steps, with the
    regularisers added (`total`), and its accuracy."""

    total: jax.Array
    loss: jax.Array
    accuracy: jax.Array
    activation: jax.Array
    temporal: jax.Array


def window_loss(
    model: RNNModel,
    batch: Batch,
    hidden: jax.Array,
    rng: jax.Array | None,
    *,
    activation_reg: float,
    temporal_reg: float,
    train: bool = True,
) -> tuple[LossParts, jax.Array]:
    """The loss of one padded window (`tokens`, `label`, `valid`) from `hidden`, and the
    hidden state after its last real step. Padding counts nowhere: the cross-entropy and
    AR are means over real steps, TAR over pairs of consecutive real steps, as the
    reference's means over an unpadded window."""
    valid = batch["valid"].astype(jnp.float32)
    out = model(batch["tokens"], hidden, train=train, rng=rng, valid=valid)
    labels = batch["label"]
    count = jnp.maximum(valid.sum(), 1.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels)
    loss = (ce * valid).sum() / count
    accuracy = ((jnp.argmax(out.logits, -1) == labels) * valid).sum() / count
    width = out.outputs.shape[-1]
    activation = (jnp.square(out.outputs) * valid[..., None]).sum() / (count * width)
    pairs = valid[:, 1:] * valid[:, :-1]
    change = jnp.square(out.raw_outputs[:, 1:] - out.raw_outputs[:, :-1])
    temporal = (change * pairs[..., None]).sum() / (jnp.maximum(pairs.sum(), 1.0) * width)
    total = loss + activation_reg * activation + temporal_reg * temporal
    return LossParts(total, loss, accuracy, activation, temporal), out.hidden


def regularisers(parts: LossParts, activation_reg: float, temporal_reg: float) -> Metrics:
    """A training window's regularisers as the log names them, apart from its
    cross-entropy (`train_loss`): AR (`ar_reg`) and TAR (`tar_reg`), each weighted, and
    their sum with the cross-entropy (`train_objective`); nothing when both are off."""
    terms = {}
    if activation_reg:
        terms["ar_reg"] = activation_reg * parts.activation
    if temporal_reg:
        terms["tar_reg"] = temporal_reg * parts.temporal
    return (terms | {"train_objective": parts.total}) if terms else {}


class LanguageTrainer(NamedTuple):
    """Functional access to a recurrent genotype's language model: init, one training step
    over a window, evaluation of a window.

    Attributes:
        graphdef: the model's structure.
        network: rngs -> a fresh model.
        optimizer: clip, weight decay and SGD (`weight_optimizer`).
        learning_rate: the base learning rate by step.
        bptt: the mean window length; a window's update is scaled by its length / bptt.
        activation_reg, temporal_reg: AR's alpha and TAR's beta.
        batch_size, hidden_size: the training streams and the hidden state's width.
        epochs: the run's epochs (the validation-loss history's length).
    """

    graphdef: nnx.GraphDef
    network: Callable[[nnx.Rngs], RNNModel]
    optimizer: optax.GradientTransformation
    learning_rate: Callable[[jax.Array], jax.Array]
    bptt: int
    activation_reg: float
    temporal_reg: float
    batch_size: int
    hidden_size: int
    epochs: int

    @classmethod
    def create(cls, network: Callable[[nnx.Rngs], RNNModel], **kwargs: Any) -> LanguageTrainer:
        """The trainer; the model's structure comes from `eval_shape` (no allocation)."""
        abstract = nnx.eval_shape(lambda: network(nnx.Rngs(0)))
        graphdef, _ = nnx.split(abstract, nnx.Param)
        return cls(graphdef, network, **kwargs)

    def init(self, rng: jax.Array) -> LMState:
        """Fresh weights from `rng`, zero hidden state, averaging off."""
        init_rng, state_rng = jax.random.split(rng)
        _, params = nnx.split(self.network(nnx.Rngs(params=init_rng)), nnx.Param)
        return LMState(
            step=jnp.zeros((), jnp.int32),
            rng=state_rng,
            params=params,
            opt=self.optimizer.init(params),
            hidden=jnp.zeros((self.batch_size, self.hidden_size), jnp.float32),
            averaging=Averaging.off(params),
            val_losses=jnp.full((self.epochs,), jnp.inf, jnp.float32),
        )

    def module(self, params: nnx.State) -> RNNModel:
        """The model with `params` (a copy; they are not aliased)."""
        return nnx.merge(self.graphdef, params, copy=True)

    def step(self, state: LMState, batch: Batch) -> tuple[LMState, Metrics]:
        """One SGD step on a padded window, carrying the hidden state and the average."""
        rng = jax.random.fold_in(state.rng, state.step)
        loss_of = partial(
            window_loss,
            activation_reg=self.activation_reg,
            temporal_reg=self.temporal_reg,
        )

        def loss_fn(params: nnx.State) -> tuple[jax.Array, tuple[LossParts, jax.Array]]:
            parts, hidden = loss_of(self.module(params), batch, state.hidden, rng)
            return parts.total, (parts, hidden)

        grads, (parts, hidden) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt = self.optimizer.update(grads, state.opt, state.params)
        # AWD-LSTM sets the lr to lr * seq_len / bptt for each window; SGD's update (with
        # or without momentum) is proportional to its lr, so scaling it is the same.
        scale = batch["valid"][0].sum().astype(jnp.float32) / self.bptt
        updates = jax.tree.map(lambda u: u * scale, updates)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "train_loss": parts.loss,
            "train_acc": parts.accuracy,
            **regularisers(parts, self.activation_reg, self.temporal_reg),
            "grad_norm": optax.tree.norm(grads),
            "lr": self.learning_rate(state.step) * scale,
        }
        new_state = state._replace(
            step=state.step + 1,
            params=params,
            opt=opt,
            hidden=jax.lax.stop_gradient(hidden),
            averaging=state.averaging.add(params),
        )
        return new_state, metrics

    def evaluate(
        self, params: nnx.State, hidden: jax.Array, batch: Batch
    ) -> tuple[dict[str, jax.Array], jax.Array]:
        """Summed loss, correct count and token count over the real steps of one padded
        window (`tokens`, `label`, `valid`), and the hidden state after its last real one."""
        valid = batch["valid"].astype(jnp.float32)
        out = self.module(params)(batch["tokens"], hidden, valid=valid)
        labels = batch["label"]
        ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels)
        sums = {
            "loss_sum": (ce * valid).sum(),
            "correct": ((jnp.argmax(out.logits, -1) == labels) * valid).sum(),
            "count": valid.sum(),
        }
        return sums, out.hidden


def eval_params(state: LMState) -> nnx.State:
    """The weights evaluation and the final model use: NT-ASGD's average once it holds a
    step, else the weights themselves (read on the host)."""
    averaging = jax.device_get(state.averaging.count)
    return state.averaging.params if int(averaging) > 0 else state.params


def build_language_trainer(
    config: Config, genotype: Genotype, vocab_size: int, steps_per_epoch: int
) -> LanguageTrainer:
    """The language model, optimizer and regularisers a retraining run uses."""
    t, text = config.train, config.text
    network = partial(
        RNNModel,
        genotype,
        vocab_size=vocab_size,
        embed_size=text.embed_size,
        hidden_size=text.hidden_size,
        dropouts=Dropouts(**text.dropout.model_dump()),
        tie_weights=text.tie_weights,
    )
    weights = config.optim.weights
    return LanguageTrainer.create(
        lambda rngs: network(rngs=rngs),
        optimizer=weight_optimizer(weights, t.epochs, steps_per_epoch),
        learning_rate=weight_schedule(weights, t.epochs, steps_per_epoch),
        bptt=text.bptt,
        activation_reg=text.activation_reg,
        temporal_reg=text.temporal_reg,
        batch_size=t.batch_size,
        hidden_size=text.hidden_size,
        epochs=t.epochs,
    )


# ------------------------------------------------------------------ windows and evaluation


def split_longest(windows: Sequence[Window], count: int) -> list[Window]:
    """`windows` with the longest one (the earliest of equals) halved until there are
    `count`: the same tokens in the same order, in as many steps as the run's epochs have."""
    windows = list(windows)
    if count > sum(w.length for w in windows):
        raise ValueError(f"{len(windows)} windows cannot make {count}")
    heap = [(-w.length, w.start) for w in windows]
    heapq.heapify(heap)
    while len(heap) < count:
        length, start = heapq.heappop(heap)
        first = (-length + 1) // 2
        heapq.heappush(heap, (-first, start))
        heapq.heappush(heap, (-(-length - first), start + first))
    return sorted(Window(start, -length) for length, start in heap)


class WindowPlan(NamedTuple):
    """How a run walks its training streams: every epoch takes `steps` windows."""

    n_steps: int
    bptt: int
    steps: int
    seed: int
    variable: bool

    @classmethod
    def of(cls, n_steps: int, bptt: int, epochs: int, seed: int, variable: bool) -> WindowPlan:
        """The plan of a run: `steps` is the most windows any epoch draws (AWD-LSTM's
        variable lengths vary the count), so every epoch has that many steps."""
        if not variable:
            return cls(n_steps, bptt, len(bptt_windows(n_steps, bptt)), seed, variable)
        most = max(len(bptt_windows(n_steps, bptt, _rng(seed, e))) for e in range(epochs))
        return cls(n_steps, bptt, most, seed, variable)

    def windows(self, epoch: int) -> list[Window]:
        """Epoch `epoch`'s windows: AWD-LSTM's draws from `default_rng([seed, epoch])` (or
        fixed `bptt`-long ones), the longest halved until there are `steps`."""
        rng = _rng(self.seed, epoch) if self.variable else None
        return split_longest(bptt_windows(self.n_steps, self.bptt, rng), self.steps)


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


__all__ = [
    "Averaging",
    "LMState",
    "LanguageTrainer",
    "LossParts",
    "Vocabulary",
    "WindowPlan",
    "build_language_trainer",
    "check_same_vocabulary",
    "eval_params",
    "nonmono_switch",
    "split_longest",
    "window_loss",
]
