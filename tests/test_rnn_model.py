"""The recurrent language models: the published cells' parameter counts, the scanned model
against the cell stepped in Python, dropout only in training and from its key, tying."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nasax.supernet import (
    DARTS_RNN_SPACE,
    DARTS_RNN_V1,
    DARTS_RNN_V2,
    ENAS_RNN,
    ArchParam,
    Dropouts,
    RNNModel,
    RNNSearchModel,
)
from nasax.supernet.discrete import count_params
from tests.tolerance import assert_close

V, E = 30, 6
"""Vocabulary and embedding (= hidden) size of the tiny models."""


def reference_params(vocab: int, size: int, nodes: int) -> int:
    """What the DARTS reference's RNNModel holds (rnn/model.py, embedding = hidden =
    `size`): the encoder (vocab, size), the decoder's bias (its weight is the encoder's),
    the cell's W0 (2 size, 2 size) and one (size, 2 size) matrix per node; the search
    cell's BatchNorm has no affine parameters."""
    return vocab * size + vocab + (2 * size) * (2 * size) + nodes * size * (2 * size)


@pytest.mark.parametrize(
    ("genotype", "expected"),
    [(DARTS_RNN_V1, 22_960_000), (DARTS_RNN_V2, 22_960_000), (ENAS_RNN, 27_295_000)],
)
def test_published_cells_have_the_reference_parameter_count(genotype, expected):
    """At the papers' size (850 wide, Penn Treebank's 10,000 words): the DARTS paper's
    23M for its cells. ENAS' cell has 11 nodes, so the reference builds 27.3M of it."""
    model = nnx.eval_shape(lambda: RNNModel(genotype, vocab_size=10_000, rngs=nnx.Rngs(0)))
    assert count_params(model) == expected == reference_params(10_000, 850, len(genotype.recurrent))


def test_the_search_model_has_the_reference_parameter_count_and_its_alphas():
    model = nnx.eval_shape(
        lambda: RNNSearchModel(DARTS_RNN_SPACE, vocab_size=10_000, rngs=nnx.Rngs(0))
    )
    assert count_params(model) == 4_810_000 == reference_params(10_000, 300, 8)
    arch = nnx.state(model, ArchParam)
    assert [x.shape for x in jax.tree.leaves(arch)] == [(36, 5)]


def tiny(genotype=DARTS_RNN_V2, **kwargs) -> RNNModel:
    return RNNModel(genotype, vocab_size=V, embed_size=E, hidden_size=E, rngs=nnx.Rngs(0), **kwargs)


def tokens(seed: int, batch: int = 3, steps: int = 7) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), (batch, steps), 0, V)


def test_the_scanned_model_is_the_cell_stepped_in_python():
    """Embedding, the dropout masks of one pass, the cell one step at a time, the tied
    decoder: the same outputs and hidden state as the model."""
    model, x, rng = tiny(), tokens(0), jax.random.key(1)
    h0 = jnp.tanh(jax.random.normal(jax.random.key(2), (3, E)))
    out = model(x, h0, train=True, rng=rng)
    masks = model.dropout_masks(rng, 3)
    table = model.embedding[...]
    emb = table[x] * masks.words[x] * masks.embedding
    h, raw = h0, []
    for t in range(x.shape[1]):
        h = model.cell(emb[:, t], h, x_mask=masks.cell_input, h_mask=masks.hidden)
        raw.append(h)
    raw = jnp.stack(raw, 1)
    why = "the same dots in scan and in Python; errors compound over 7 steps"
    assert_close(out.raw_outputs, raw, terms=7 * 4 * E, magnitude=4.0, why=why)
    assert_close(out.hidden, h, terms=7 * 4 * E, magnitude=4.0, why=why)
    logits = (raw * masks.output) @ table.T + model.bias[...]
    assert_close(out.logits, logits, terms=7 * 4 * E + E, magnitude=20.0, why=why)
    assert out.logits.shape == (3, 7, V)


def test_the_time_loop_is_one_scan_whatever_the_length():
    model = tiny()
    graphdef, state = nnx.split(model)

    def forward(state, x):
        return nnx.merge(graphdef, state)(x).logits

    short = jax.make_jaxpr(forward)(state, tokens(0, steps=3))
    long = jax.make_jaxpr(forward)(state, tokens(0, steps=40))
    scans = list(scan_eqns(long.jaxpr))
    # one scan per platform branch (CPU recomputes each step's forward in the backward)
    assert len(scans) == 2 and {e.params["length"] for e in scans} == {40}
    assert len(short.jaxpr.eqns) == len(long.jaxpr.eqns)


def scan_eqns(jaxpr):
    """The scans of a jaxpr and of the jaxprs nested in its equations (cond branches)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # a closed jaxpr holds its jaxpr
                if hasattr(sub, "eqns"):
                    yield from scan_eqns(sub)


def test_a_window_at_a_time_carries_the_hidden_state():
    model, x = tiny(), tokens(3, steps=8)
    whole = model(x)
    first = model(x[:, :5])
    second = model(x[:, 5:], first.hidden)
    why = "the same steps, split in two passes"
    assert_close(second.hidden, whole.hidden, terms=8 * 4 * E, magnitude=4.0, why=why)
    assert_close(second.logits, whole.logits[:, 5:], terms=8 * 4 * E, magnitude=20.0, why=why)


def test_dropout_acts_only_in_training_and_follows_its_key():
    model, x = tiny(), tokens(4)
    evaluated = model(x)
    np.testing.assert_array_equal(model(x, rng=jax.random.key(9)).logits, evaluated.logits)
    np.testing.assert_array_equal(evaluated.outputs, evaluated.raw_outputs)
    a = model(x, train=True, rng=jax.random.key(5))
    np.testing.assert_array_equal(model(x, train=True, rng=jax.random.key(5)).logits, a.logits)
    assert not np.allclose(model(x, train=True, rng=jax.random.key(6)).logits, a.logits)
    assert not np.allclose(a.logits, evaluated.logits)
    # locked dropout: an output unit is dropped at every step of a sequence or at none
    dropped = np.asarray(a.outputs == 0) & np.asarray(a.raw_outputs != 0)
    assert dropped.any() and (dropped == dropped[:, :1]).all()
    with pytest.raises(ValueError, match="needs a key"):
        model(x, train=True)
    quiet = tiny(dropouts=Dropouts(0.0, 0.0, 0.0, 0.0, 0.0))
    nnx.update(quiet, nnx.state(model, nnx.Param))
    np.testing.assert_array_equal(quiet(x, train=True).logits, evaluated.logits)


def test_tying_needs_equal_sizes_and_untied_models_decode_with_their_own_matrix():
    with pytest.raises(ValueError, match=r"embed_size \(6\) must equal hidden_size \(4\)"):
        RNNModel(DARTS_RNN_V2, vocab_size=V, embed_size=6, hidden_size=4, rngs=nnx.Rngs(0))
    untied = RNNModel(
        DARTS_RNN_V2, vocab_size=V, embed_size=6, hidden_size=4, tie_weights=False, rngs=nnx.Rngs(0)
    )
    assert untied.decoder.shape == (4, V) and untied(tokens(5)).logits.shape == (3, 7, V)
    assert (
        count_params(untied)
        == count_params(tiny())
        - (
            (2 * E) ** 2 + 8 * E * 2 * E  # the 6-wide cell
        )
        + (10 * 8 + 8 * 4 * 8)
        + 4 * V
    )  # the 4-wide cell (input 6), and the decoder
    with pytest.raises(ValueError, match=r"dropout rates must be in \[0, 1\)"):
        tiny(dropouts=Dropouts(output=1.0))


def test_the_search_model_runs_weights_and_paths():
    model = RNNSearchModel(
        DARTS_RNN_SPACE, vocab_size=V, embed_size=E, hidden_size=E, rngs=nnx.Rngs(0)
    )
    x = tokens(6)
    default = model(x)
    softmax = {"recurrent": jax.nn.softmax(model.alphas()["recurrent"], axis=-1)}
    np.testing.assert_array_equal(model(x, weights=softmax).logits, default.logits)
    path = {"recurrent": jnp.full(36, 1, jnp.int32)}  # tanh on every edge
    assert model(x, paths=path).logits.shape == (3, 7, V)
    before = model.cell.bn.mean[...]
    model(x, train=True, rng=jax.random.key(0))
    assert not np.allclose(model.cell.bn.mean[...], before)  # statistics updated in training
