"""The recurrent skeleton: language models around a recurrent cell, for search and retraining.

An embedding, the cell stepped over time by `lax.scan`, and a decoder tied to the
embedding (AWD-LSTM; the DARTS reference's RNNModel). It shares no stacking with the
image skeletons: there is one cell, applied at every time step, and no stem, channels
or classifier. `RNNSearchModel` holds the supernet cell and the architecture parameters
(`alpha_recurrent`, an `ArchParam`); `RNNModel` holds the cell of a genotype.

Tokens and outputs are batch-major, (batch, time), as `nasax.loop.text.batchify` lays
out a corpus. Dropout follows AWD-LSTM: whole words dropped from the embedding matrix,
locked (one mask per sequence) dropout on the embeddings and on the cell's outputs, and
one mask per sequence on the cell's input and hidden states; all of them only in
training, from an explicit key.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from nasax.supernet.genotypes import Genotype
from nasax.supernet.network import ArchParam
from nasax.supernet.ops import ParamKeys, param_keys
from nasax.supernet.rnn_cells import (
    CELL_KIND,
    DiscreteRNNCell,
    NodePath,
    RecurrentCell,
    RNNSearchCell,
    masked,
    scan_cell,
    uniform_init,
)
from nasax.supernet.spaces import SearchSpace


class Dropouts(NamedTuple):
    """Dropout rates of a language model; the DARTS reference's names in brackets."""

    output: float = 0.75
    """(dropout) locked dropout on the cell's outputs, before the decoder."""
    hidden: float = 0.25
    """(dropouth) on the previous hidden state and every state a node projects."""
    cell_input: float = 0.75
    """(dropoutx) on the cell's input at every step."""
    embedding: float = 0.2
    """(dropouti) locked dropout on the embedded tokens."""
    words: float = 0.1
    """(dropoute) drops whole words: rows of the embedding matrix."""


TRAIN_DROPOUTS = Dropouts()
"""The reference's rates for retraining a cell (rnn/train.py)."""

SEARCH_DROPOUTS = Dropouts(words=0.0)
"""The reference's rates for the search (rnn/train_search.py): no word dropout."""


class DropoutMasks(NamedTuple):
    """One forward pass's dropout masks (0 or 1/keep); None where a rate is 0 or in
    evaluation."""

    words: jax.Array | None = None
    """(vocab, 1) per embedding row."""
    embedding: jax.Array | None = None
    """(batch, 1, embed) the same at every step."""
    cell_input: jax.Array | None = None
    """(batch, embed)."""
    hidden: jax.Array | None = None
    """(batch, hidden)."""
    output: jax.Array | None = None
    """(batch, 1, hidden) the same at every step."""


def dropout_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array | None:
    """Inverted dropout: 0 with probability `rate`, else 1 / (1 - rate); None at rate 0."""
    if rate == 0:
        return None
    keep = 1.0 - rate
    return jax.random.bernoulli(key, keep, shape).astype(jnp.float32) / keep


class LMOutput(NamedTuple):
    """A language model's pass over (batch, time) tokens."""

    logits: jax.Array
    """(batch, time, vocab) next-token logits."""
    hidden: jax.Array
    """(batch, hidden) the last hidden state, to carry into the next window."""
    raw_outputs: jax.Array
    """(batch, time, hidden) the cell's outputs (temporal activation regularisation)."""
    outputs: jax.Array
    """(batch, time, hidden) the same after dropout, as the decoder read them
    (activation regularisation)."""


class LanguageModel(nnx.Module):
    """The recurrent skeleton's shared part: embedding, cell over time, decoder.

    The decoder's weight is the embedding matrix (weight tying), so embedding and hidden
    sizes must be equal; with `tie_weights=False` it has its own (hidden, vocab) matrix.
    Embedding (and an untied decoder) start uniform in ±0.04, the decoder's bias at 0.
    """

    cell: RecurrentCell

    def _build(
        self,
        cell: RecurrentCell,
        *,
        vocab_size: int,
        embed_size: int,
        hidden_size: int,
        dropouts: Dropouts,
        tie_weights: bool,
        rngs: ParamKeys,
    ) -> None:
        if tie_weights and embed_size != hidden_size:
            raise ValueError(
                f"weight tying decodes with the embedding matrix, so embed_size ({embed_size}) "
                f"must equal hidden_size ({hidden_size}); make them equal or pass "
                "tie_weights=False"
            )
        bad = {name: rate for name, rate in dropouts._asdict().items() if not 0 <= rate < 1}
        if bad:
            raise ValueError(f"dropout rates must be in [0, 1); got {bad}")
        self.embedding = nnx.Param(uniform_init(rngs.params(), (vocab_size, embed_size)))
        untied = None if tie_weights else uniform_init(rngs.params(), (hidden_size, vocab_size))
        self.decoder = None if untied is None else nnx.Param(untied)
        self.bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32))
        self.cell = cell
        self.dropouts = dropouts
        self.vocab_size, self.embed_size, self.hidden_size = vocab_size, embed_size, hidden_size

    def init_hidden(self, batch_size: int) -> jax.Array:
        """The hidden state a corpus starts from: zeros, (batch, hidden)."""
        return jnp.zeros((batch_size, self.hidden_size), jnp.float32)

    def dropout_masks(self, rng: jax.Array, batch_size: int) -> DropoutMasks:
        """Fresh masks for one training pass over a batch of `batch_size` sequences."""
        keys = jax.random.split(rng, 5)
        d, e, h = self.dropouts, self.embed_size, self.hidden_size
        return DropoutMasks(
            words=dropout_mask(keys[0], d.words, (self.vocab_size, 1)),
            embedding=dropout_mask(keys[1], d.embedding, (batch_size, 1, e)),
            cell_input=dropout_mask(keys[2], d.cell_input, (batch_size, e)),
            hidden=dropout_mask(keys[3], d.hidden, (batch_size, h)),
            output=dropout_mask(keys[4], d.output, (batch_size, 1, h)),
        )

    def _masks(self, train: bool, rng: jax.Array | None, batch_size: int) -> DropoutMasks:
        if not train:
            return DropoutMasks()
        if rng is None:
            if any(self.dropouts):
                raise ValueError(
                    "training with dropout needs a key: pass rng=, or build the model with "
                    "Dropouts(0, 0, 0, 0, 0)"
                )
            return DropoutMasks()
        return self.dropout_masks(rng, batch_size)

    def _forward(
        self,
        tokens: jax.Array,
        hidden: jax.Array | None,
        train: bool,
        rng: jax.Array | None,
        step_args: dict[str, Any],
        valid: jax.Array | None = None,
        dropout: bool | None = None,
    ) -> LMOutput:
        """Embeds `tokens` (batch, time), runs the cell from `hidden` with `step_args`
        besides the dropout masks (holding the state at steps `valid` marks 0), decodes.
        Dropout applies when `dropout` says (default: in training)."""
        batch_size = tokens.shape[0]
        hidden = self.init_hidden(batch_size) if hidden is None else hidden
        masks = self._masks(train if dropout is None else dropout, rng, batch_size)
        table = self.embedding[...]
        x = table[tokens]
        if masks.words is not None:
            x = x * masks.words[tokens]
        x = masked(x, masks.embedding)
        raw, last = scan_cell(
            self.cell,
            x,
            hidden,
            valid=valid,
            x_mask=masks.cell_input,
            h_mask=masks.hidden,
            **step_args,
        )
        out = masked(raw, masks.output)
        kernel = table.T if self.decoder is None else self.decoder[...]
        return LMOutput(out @ kernel + self.bias[...], last, raw, out)


class RNNSearchModel(LanguageModel):
    """The language-model supernet of a recurrent space (the reference's RNNModelSearch).

    `alpha_recurrent` ((edges, ops), an `ArchParam`) weighs the ops of every edge; call
    with `weights` to use op weights a strategy computed, or `paths` for one op per edge
    or per node; by default the weights are the softmax of the alphas. The reference
    searches at embedding and hidden size 300 with `SEARCH_DROPOUTS`.

    Args:
        space: a recurrent space (`darts_rnn`, `enas_rnn`).
        vocab_size: tokens of the vocabulary.
        embed_size, hidden_size: sizes of the embedding and of the hidden state.
        dropouts: dropout rates in training.
        batch_norm: normalise the cell's states as the reference's search cell does.
        tie_weights: decode with the embedding matrix.
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        vocab_size: int,
        embed_size: int = 300,
        hidden_size: int = 300,
        dropouts: Dropouts = SEARCH_DROPOUTS,
        batch_norm: bool = True,
        tie_weights: bool = True,
        rngs: nnx.Rngs | ParamKeys,
    ) -> None:
        rngs = param_keys(rngs)
        cell = RNNSearchCell(
            space,
            input_size=embed_size,
            hidden_size=hidden_size,
            batch_norm=batch_norm,
            rngs=rngs,
        )
        self._build(
            cell,
            vocab_size=vocab_size,
            embed_size=embed_size,
            hidden_size=hidden_size,
            dropouts=dropouts,
            tie_weights=tie_weights,
            rngs=rngs,
        )
        shape = (space.n_edges, space.n_ops)
        self.alpha_recurrent = ArchParam(1e-3 * jax.random.normal(rngs.params(), shape))
        self.space = space

    def alphas(self) -> dict[str, jax.Array]:
        """The architecture parameters by cell kind ({"recurrent": (edges, ops)})."""
        return {CELL_KIND: self.alpha_recurrent[...]}

    def __call__(
        self,
        tokens: jax.Array,
        hidden: jax.Array | None = None,
        *,
        train: bool = False,
        rng: jax.Array | None = None,
        weights: dict[str, jax.Array] | None = None,
        paths: dict[str, jax.Array | NodePath] | None = None,
        valid: jax.Array | None = None,
        dropout: bool | None = None,
    ) -> LMOutput:
        """Next-token logits for `tokens` (batch, time).

        Args:
            tokens: int token ids.
            hidden: (batch, hidden) state to start from (default: zeros).
            train: dropout (needs `rng`) and the cell's batch statistics.
            rng: key for this pass's dropout masks.
            weights: {"recurrent": (edges, ops)} op weights; default: the softmax of the
                alphas, unless `paths`.
            paths: {"recurrent": path}: a single path, as `RNNSearchCell` takes it.
            valid: optional (batch, time) mask of real steps; padded steps (0) leave the
                hidden state as it was (`scan_cell`).
            dropout: whether dropout applies (default: `train`); a candidate scored with
                batch statistics runs without it.
        """
        if weights is None and paths is None:
            weights = {CELL_KIND: jax.nn.softmax(self.alpha_recurrent[...], axis=-1)}
        step_args = {
            "weights": None if weights is None else weights[CELL_KIND],
            "path": None if paths is None else paths[CELL_KIND],
            "train": train,
        }
        return self._forward(tokens, hidden, train, rng, step_args, valid, dropout)


class HiddenCarry(nnx.BatchStat):
    """Hidden states carried from one BPTT window to the next, one per stream of windows
    (the weight and the architecture step's): state a step updates but never
    differentiates, so it travels with the BN statistics."""


class CarriedSearchModel(nnx.Module):
    """The language-model supernet as a search strategy calls a supernet: ``logits =
    model(x, train=..., weights=..., paths=...)``, where `x` holds one window.

    `x` is a dict: `tokens` (batch, time); `valid` (batch, time), 1 at real steps;
    `stream` (batch,) the window's stream (all rows alike); `reset` (batch,) 1 where the
    stream starts afresh (an epoch's first window); `rng`, a dropout key (None: no
    dropout). The window starts from its stream's carried hidden state and leaves its
    last one there, as the DARTS reference carries `hidden` and `hidden_valid`.

    Args:
        model: the supernet language model.
        batch_size: rows of the training windows.
        streams: how many streams carry a hidden state.
    """

    def __init__(self, model: RNNSearchModel, *, batch_size: int, streams: int = 2) -> None:
        self.lm = model
        self.carry = HiddenCarry(jnp.zeros((streams, batch_size, model.hidden_size), jnp.float32))

    def alphas(self) -> dict[str, jax.Array]:
        return self.lm.alphas()

    def __call__(
        self,
        x: dict[str, Any],
        *,
        train: bool = False,
        weights: dict[str, jax.Array] | None = None,
        paths: dict[str, jax.Array] | None = None,
        edge_weights: dict[str, jax.Array] | None = None,
    ) -> jax.Array:
        """Next-token logits of the window `x`; the stream's hidden state moves on."""
        if edge_weights is not None:
            raise ValueError("a recurrent supernet has no edge weights (PC-DARTS' betas)")
        stream = x["stream"][0]
        carry = self.carry[...]
        hidden = carry[stream] * (1.0 - x["reset"][:, None])
        rng = x.get("rng")
        out = self.lm(
            x["tokens"],
            hidden,
            train=train,
            rng=rng,
            weights=weights,
            paths=paths,
            valid=x["valid"],
            dropout=train and rng is not None,
        )
        self.carry[...] = carry.at[stream].set(out.hidden)
        return out.logits


class RNNModel(LanguageModel):
    """A recurrent genotype as the language model the reference retrains (RNNModel with
    a DARTSCell), a plain module: ``out = model(tokens, hidden, train=..., rng=...)``.

    At the papers' size (embedding and hidden 850, Penn Treebank's 10,000 words) the
    DARTS cells have 22,960,000 parameters.

    Args:
        genotype: a genotype of a recurrent space.
        vocab_size: tokens of the vocabulary.
        embed_size, hidden_size: sizes of the embedding and of the hidden state.
        dropouts: dropout rates in training.
        tie_weights: decode with the embedding matrix.
    """

    def __init__(
        self,
        genotype: Genotype,
        *,
        vocab_size: int,
        embed_size: int = 850,
        hidden_size: int = 850,
        dropouts: Dropouts = TRAIN_DROPOUTS,
        tie_weights: bool = True,
        rngs: nnx.Rngs | ParamKeys,
    ) -> None:
        rngs = param_keys(rngs)
        cell = DiscreteRNNCell(genotype, input_size=embed_size, hidden_size=hidden_size, rngs=rngs)
        self._build(
            cell,
            vocab_size=vocab_size,
            embed_size=embed_size,
            hidden_size=hidden_size,
            dropouts=dropouts,
            tie_weights=tie_weights,
            rngs=rngs,
        )
        self.genotype = genotype

    def __call__(
        self,
        tokens: jax.Array,
        hidden: jax.Array | None = None,
        *,
        train: bool = False,
        rng: jax.Array | None = None,
        valid: jax.Array | None = None,
    ) -> LMOutput:
        """Next-token logits for `tokens` (batch, time) from `hidden` (default: zeros);
        dropout only with `train`, drawn from `rng`; padded steps (`valid` 0) leave the
        hidden state as it was."""
        return self._forward(tokens, hidden, train, rng, {}, valid)


__all__ = [
    "SEARCH_DROPOUTS",
    "TRAIN_DROPOUTS",
    "CarriedSearchModel",
    "DropoutMasks",
    "Dropouts",
    "HiddenCarry",
    "LMOutput",
    "LanguageModel",
    "RNNModel",
    "RNNSearchModel",
    "dropout_mask",
]
