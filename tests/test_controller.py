"""The ENAS controller: its choices make valid cells, its log-probabilities and entropies
are right, and a REINFORCE step moves it toward rewarded choices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from nasax.search.controller import (
    Controller,
    choice_plan,
    tokens_to_path,
    tokens_to_paths,
    uniform_entropy,
)
from nasax.search.enas import moving_baseline, reinforce_loss
from nasax.search.single_path import derivable_ops, genotype_paths, paths_genotype
from nasax.supernet.genotypes import DARTS_V2
from nasax.supernet.spaces import get_space
from tests.tolerance import assert_close


def _controller(space: str, seed: int = 0) -> Controller:
    return Controller(get_space(space), rngs=nnx.Rngs(seed), hidden=16)


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_samples_are_valid_cells_of_the_space(space):
    sp = get_space(space)
    controller = _controller(space)
    graphdef, params = nnx.split(controller)
    sample = jax.jit(jax.vmap(lambda k: nnx.merge(graphdef, params)(k), in_axes=0))
    outs = sample(jax.random.split(jax.random.PRNGKey(0), 20))
    for i in range(20):
        tokens = {k: v[i] for k, v in outs.tokens.items()}
        paths = {k: np.asarray(v) for k, v in tokens_to_paths(tokens, sp).items()}
        genotype = paths_genotype(paths, sp)
        genotype.validate(sp)  # raises if the cell does not fit the space
        # The path is exactly the genotype's (nothing lost by the discretizer).
        for kind, path in genotype_paths(genotype, sp).items():
            np.testing.assert_array_equal(path, paths[kind])
        if sp.edges_per_node:
            for node in genotype.normal:  # two distinct inputs per node
                assert len({src for _, src in node}) == 2


def test_log_prob_is_the_sum_of_its_choices_log_probabilities():
    """Scoring the sampled choices again (teacher forcing) gives the same log-probability,
    and it equals the sum over choices of log softmax at each step."""
    controller = _controller("darts", seed=3)
    out = controller(jax.random.PRNGKey(7))
    total = out.log_prob()
    choices = 2 * len(choice_plan(get_space("darts")))
    by_choice = sum(float(v.sum()) for v in out.log_probs.values())
    why = f"{choices} log-probabilities of one sign, summed in float32 and float64"
    assert_close(total, by_choice, terms=choices, why=why)
    again = controller(jax.random.PRNGKey(123), forced=out.tokens)
    # Another program: each choice's LSTM step (dots of 2 x 16 terms) takes the state the
    # previous ones left.
    why = "log-probability of the forced choices against the sampled ones"
    assert_close(again.log_prob(), total, terms=choices * (2 * 16 + 1), why=why)
    # One entry per choice; node 0's second input has a single option left (p = 1).
    for lp in out.log_probs.values():
        assert lp.shape == (len(choice_plan(get_space("darts"))),)
        assert np.all(np.asarray(lp) <= 0)
        assert float(lp[2]) == 0.0 and float(lp[0]) < 0


def test_sampling_frequencies_follow_the_log_probabilities():
    """Over many samples, the empirical frequency of the first op choice matches
    exp(log-prob) of that choice (the reported log-probs are the sampling distribution)."""
    space = get_space("nb201")
    controller = _controller("nb201", seed=1)
    # Sharpen the op head so the distribution is far from uniform.
    controller.op_head.bias[...] = jnp.arange(len(derivable_ops(space)), dtype=jnp.float32) * 8
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    outs = jax.vmap(lambda k: controller(k))(keys)
    first = np.asarray(outs.tokens["normal"][:, 0])
    probs = np.exp(np.asarray(outs.log_probs["normal"][:, 0]))
    for op in np.unique(first):
        p = probs[first == op][0]
        # 4000 draws: 0.03 is 3.8 standard errors at the widest (p = 1/2).
        assert np.mean(first == op) == pytest.approx(p, abs=0.03)


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_entropy_of_a_uniform_controller(space):
    """With zero attention and op heads every choice is uniform: the entropy is the sum
    of log(number of options), the second input of a node having one option fewer."""
    controller = _controller(space)
    controller.op_head.kernel[...] = jnp.zeros_like(controller.op_head.kernel[...])
    controller.op_head.bias[...] = jnp.zeros_like(controller.op_head.bias[...])
    controller.attn_v.kernel[...] = jnp.zeros_like(controller.attn_v.kernel[...])
    out = controller(jax.random.PRNGKey(0))
    # Per choice n_options terms p log p (n <= 8), then a sum over the choices (32 at most).
    why = "float32 entropies of uniform choices, summed"
    assert_close(out.entropy(), uniform_entropy(get_space(space)), terms=8 + 2 + 32, why=why)
    if space == "darts":  # 2 kinds x 4 nodes x 2 ops x log 7, inputs log(2*1) + ... + log(5*4)
        inputs = np.log(2) + np.log(3 * 2) + np.log(4 * 3) + np.log(5 * 4)
        assert uniform_entropy(get_space(space)) == pytest.approx(2 * (8 * np.log(7) + inputs))


def test_reinforce_raises_the_probability_of_a_rewarded_choice():
    """One Adam step on a positive advantage makes the sampled cell more likely, a
    negative advantage less likely."""
    controller = _controller("nb201", seed=2)
    graphdef, params = nnx.split(controller)
    key = jax.random.PRNGKey(5)
    tokens = controller(key).tokens

    @jax.jit
    def log_prob(p):
        return nnx.merge(graphdef, p)(key, forced=tokens).log_prob()

    @jax.jit
    def loss(p, advantage):
        out = nnx.merge(graphdef, p)(key, forced=tokens)
        return reinforce_loss(out.log_prob()[None], out.entropy()[None], advantage, 1e-4)

    before = float(log_prob(params))
    for advantage, sign in ((1.0, 1), (-1.0, -1)):
        opt = optax.adam(0.0035, b1=0.0, eps=1e-3)
        grads = jax.grad(loss)(params, jnp.array([advantage]))
        updates, _ = opt.update(grads, opt.init(params), params)
        after = float(log_prob(optax.apply_updates(params, updates)))
        assert sign * (after - before) > 1e-3


def test_moving_baseline_is_enas_sequential_average():
    rewards = jnp.array([0.5, 0.7, 0.2])
    advantages, final = moving_baseline(jnp.array(0.1), rewards, 0.9)
    b, expected = 0.1, []
    for r in [0.5, 0.7, 0.2]:
        expected.append(r - b)
        b = 0.9 * b + 0.1 * r
    # Three float32 steps of a subtraction and two products and a sum, of values <= 0.7.
    why = "float32 moving baseline"
    assert_close(advantages, expected, terms=3 * 4, magnitude=0.7, why=why)
    assert_close(final, b, terms=3 * 4, magnitude=0.7, why=why)


def test_tokens_to_path_places_ops_on_the_chosen_edges():
    space = get_space("darts")
    ops = list(derivable_ops(space))
    # Node 0 takes (sep_conv_3x3 <- 1, skip_connect <- 0); the others copy DARTS_V2.
    paths = genotype_paths(DARTS_V2, space)
    tokens = []
    for node in DARTS_V2.normal:
        for op, src in node:
            tokens += [src, ops.index(space.ops.index(op))]
    path = np.asarray(tokens_to_path(jnp.array(tokens), space))
    np.testing.assert_array_equal(path, paths["normal"])
