"""The ENAS controller: an LSTM that samples a cell node by node, as a sequence of choices.

For every intermediate node of a cell kind it picks `edges_per_node` (input, op) pairs:
the input by attention over the nodes built so far (each input at most once per node,
so the pair set is a genotype), the op from the derivable ops. In spaces that keep every
edge (NAS-Bench-201) it picks only an op per edge. Logits are squashed as in ENAS:
`c * tanh(logits / temperature)`, with a smaller `c` for ops.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nasax.search.single_path import derivable_ops, none_index
from nasax.supernet.ops import flat_uniform
from nasax.supernet.spaces import SearchSpace

_MASKED = -1e9
"""Logit of an input a node already took (finite, so gradients through the softmax stay
finite; its probability is exactly zero)."""

Tokens = dict[str, jax.Array]
"""Cell kind -> (choices,) int: the sampled choices in the controller's order."""


class Choice(NamedTuple):
    """One slot of the choice sequence: what is picked, for which node and edge.

    `kind` is "input" (the index of a source node) or "op" (an index into the derivable
    ops). For an op, `source` is the source node of its edge when the edge is fixed
    (spaces that keep every edge), else None (the input chosen just before).
    """

    kind: str
    node: int
    source: int | None = None


def choice_plan(space: SearchSpace) -> tuple[Choice, ...]:
    """The choices that make one cell of `space`, in sampling order."""
    plan = []
    for node in range(space.n_nodes):
        if space.edges_per_node is None:
            plan += [Choice("op", node, src) for src in range(space.n_inputs + node)]
        else:
            for _ in range(space.edges_per_node):
                plan += [Choice("input", node), Choice("op", node)]
    return tuple(plan)


def tokens_to_path(tokens: jax.Array, space: SearchSpace) -> jax.Array:
    """(edges,) op indices of the cell a choice sequence describes; `none` elsewhere."""
    ops = jnp.asarray(derivable_ops(space))
    if space.edges_per_node is None:
        path = jnp.zeros(space.n_edges, jnp.int32)
    else:
        path = jnp.full(space.n_edges, none_index(space), jnp.int32)
    source = None
    for i, choice in enumerate(choice_plan(space)):
        if choice.kind == "input":
            source = tokens[i]
            continue
        src = choice.source if choice.source is not None else source
        path = path.at[space.node_edges(choice.node)[0] + src].set(ops[tokens[i]])
    return path


def tokens_to_paths(tokens: Tokens, space: SearchSpace) -> dict[str, jax.Array]:
    """The path of every cell kind that `tokens` describe."""
    return {k: tokens_to_path(t, space) for k, t in tokens.items()}


class ControllerOutput(NamedTuple):
    """A sampled (or scored) architecture: its choices, and per choice the log-probability
    and the entropy of the distribution it was drawn from."""

    tokens: Tokens
    log_probs: Tokens
    entropies: Tokens

    def log_prob(self) -> jax.Array:
        return sum(jnp.sum(v) for v in self.log_probs.values())

    def entropy(self) -> jax.Array:
        return sum(jnp.sum(v) for v in self.entropies.values())


def _uniform(scale: float) -> nnx.Initializer:
    def init(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        return flat_uniform(key, tuple(shape), jnp.dtype(dtype), -scale, scale)

    return init


class Controller(nnx.Module):
    """ENAS' controller for the cell kinds of `space` (one LSTM shared by all kinds).

    Args:
        space: the search space whose cells it samples.
        hidden: LSTM size (ENAS: 64).
        temperature: logits are divided by it before the tanh (ENAS: 5).
        tanh_constant: scale of the tanh squashing of input logits (ENAS: 1.1).
        op_tanh_reduce: op logits use tanh_constant / op_tanh_reduce (ENAS: 2.5).
        init_scale: parameters start uniform in ±init_scale (ENAS: 0.1).
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        rngs: nnx.Rngs,
        hidden: int = 64,
        temperature: float | None = 5.0,
        tanh_constant: float | None = 1.1,
        op_tanh_reduce: float = 2.5,
        init_scale: float = 0.1,
    ) -> None:
        self.space = space
        self.kinds = tuple(space.cell_kinds)
        self.temperature = temperature
        self.tanh_constant = tanh_constant
        self.op_tanh_reduce = op_tanh_reduce
        n_ops = len(derivable_ops(space))
        init = _uniform(init_scale)
        self.lstm = nnx.LSTMCell(
            hidden,
            hidden,
            kernel_init=init,
            recurrent_kernel_init=init,
            bias_init=init,
            rngs=rngs,
        )
        self.start = nnx.Param(init(rngs.params(), (hidden,)))
        self.op_embed = nnx.Embed(n_ops, hidden, embedding_init=init, rngs=rngs)
        self.op_head = nnx.Linear(hidden, n_ops, kernel_init=init, bias_init=init, rngs=rngs)
        self.attn_key = nnx.Linear(hidden, hidden, use_bias=False, kernel_init=init, rngs=rngs)
        self.attn_query = nnx.Linear(hidden, hidden, use_bias=False, kernel_init=init, rngs=rngs)
        self.attn_v = nnx.Linear(hidden, 1, use_bias=False, kernel_init=init, rngs=rngs)

    def _squash(self, logits: jax.Array, scale: float | None) -> jax.Array:
        if self.temperature is not None:
            logits = logits / self.temperature
        if scale is not None:
            logits = scale * jnp.tanh(logits)
        return logits

    def __call__(
        self, rng: jax.Array, forced: Tokens | None = None, *, greedy: bool = False
    ) -> ControllerOutput:
        """Samples a cell of every kind from `rng`; or scores the choices `forced`; or,
        with `greedy`, takes the most likely choice at every step.

        The choices of a cell run in one `lax.scan` (a fixed-size step over padded
        candidate lists), so the compiled program does not grow with the cell.
        """
        hidden = self.start.shape[0]
        plan = choice_plan(self.space)
        n_ops = self.op_head.out_features
        n_anchors = self.space.n_inputs + self.space.n_nodes
        width = max(n_anchors, n_ops)
        is_input = jnp.array([c.kind == "input" for c in plan])
        available = jnp.array([self.space.n_inputs + c.node for c in plan])
        node_ends = jnp.array(
            [i + 1 == len(plan) or plan[i + 1].node != c.node for i, c in enumerate(plan)]
        )
        op_scale = None if self.tanh_constant is None else self.tanh_constant / self.op_tanh_reduce
        slots = jnp.arange(width)

        def pad(logits: jax.Array) -> jax.Array:
            return jnp.full(width, _MASKED).at[: logits.shape[0]].set(logits)

        def choose(carry: tuple, inputs: tuple) -> tuple[tuple, tuple]:
            lstm, x, anchors, keys, count, taken = carry
            key, forced_token, input_step, avail, node_end = inputs
            lstm, h = self.lstm(lstm, x)
            attention = self.attn_v(jnp.tanh(keys + self.attn_query(h)))[:, 0]
            input_logits = self._squash(attention, self.tanh_constant)
            # Only nodes built so far, each input at most once per node.
            input_logits = jnp.where((slots[:n_anchors] < avail) & ~taken, input_logits, _MASKED)
            logits = jnp.where(
                input_step, pad(input_logits), pad(self._squash(self.op_head(h), op_scale))
            )
            if forced is not None:
                token = forced_token
            elif greedy:
                token = jnp.argmax(logits)
            else:
                token = jax.random.categorical(key, logits)
            logp = jax.nn.log_softmax(logits)
            entropy = -jnp.sum(jnp.exp(logp) * logp)
            x = jnp.where(input_step, anchors[token % n_anchors], self.op_embed(token % n_ops))
            taken = jnp.where(input_step, taken | (slots[:n_anchors] == token), taken)
            # When a node is complete, its LSTM output becomes a candidate input.
            end_lstm, end_h = self.lstm(lstm, x)
            anchors = jnp.where(node_end, anchors.at[count].set(end_h), anchors)
            keys = jnp.where(node_end, keys.at[count].set(self.attn_key(end_h)), keys)
            lstm = jax.tree.map(lambda a, b: jnp.where(node_end, a, b), end_lstm, lstm)
            x = jnp.where(node_end, self.start[...], x)
            count = count + node_end
            taken = jnp.where(node_end, jnp.zeros_like(taken), taken)
            return (lstm, x, anchors, keys, count, taken), (token, logp[token], entropy)

        lstm = (jnp.zeros(hidden), jnp.zeros(hidden))
        tokens, log_probs, entropies = {}, {}, {}
        for kind, kind_rng in zip(self.kinds, jax.random.split(rng, len(self.kinds))):
            # The cell's input nodes: attention keys from the LSTM, zero embeddings.
            anchors = jnp.zeros((n_anchors, hidden))
            keys = jnp.zeros((n_anchors, hidden))
            for i in range(self.space.n_inputs):
                lstm, h = self.lstm(lstm, jnp.zeros(hidden))
                keys = keys.at[i].set(self.attn_key(h))
            given = (
                jnp.asarray(forced[kind], jnp.int32)
                if forced is not None
                else jnp.zeros(len(plan), jnp.int32)
            )
            carry = (
                lstm,
                self.start[...],
                anchors,
                keys,
                jnp.asarray(self.space.n_inputs),
                jnp.zeros(n_anchors, bool),
            )
            steps = (jax.random.split(kind_rng, len(plan)), given, is_input, available, node_ends)
            (lstm, *_), (picks, lps, ents) = jax.lax.scan(choose, carry, steps)
            tokens[kind] = picks.astype(jnp.int32)
            log_probs[kind] = lps
            entropies[kind] = ents
        return ControllerOutput(tokens, log_probs, entropies)


def uniform_entropy(space: SearchSpace) -> float:
    """The entropy of a controller that picks uniformly: sum of log(choices) per choice."""
    n_ops = len(derivable_ops(space))
    total = 0.0
    for choice in choice_plan(space):
        if choice.kind == "op":
            total += np.log(n_ops)
    if space.edges_per_node is not None:
        for node in range(space.n_nodes):
            n = space.n_inputs + node
            total += sum(np.log(n - k) for k in range(space.edges_per_node))
    return total * len(space.cell_kinds)
