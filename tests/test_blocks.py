"""Block execution: a step run block by block equals the fused program, and each distinct
block is one program wherever it recurs."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nasax.engine.blocks import (
    BlockProgram,
    block_jit,
    compile_program,
    resolve_execution,
    resolve_remat,
)
from nasax.engine.marking import UNFUSED, block, separate_program
from nasax.loop.data import batches, load_dataset
from nasax.search.options import load_config, strategy_options
from nasax.search.strategy import STRATEGIES
from nasax.search.task import build_setup
from nasax.supernet.genotypes import DARTS_V2
from nasax.train.task import build_trainer
from tests.tolerance import assert_close


class _Layer(nnx.Module):
    """A dense layer with a running mean, so a block also updates state."""

    def __init__(self, n: int, rngs: nnx.Rngs) -> None:
        self.w = nnx.Param(jax.random.normal(rngs.params(), (n, n)) / n)
        self.mean = nnx.BatchStat(jnp.zeros((n,)))

    @block
    def __call__(self, x: jax.Array, scale: jax.Array, train: bool) -> jax.Array:
        y = jnp.tanh(x @ self.w[...]) * scale
        if train:
            self.mean.set_value(0.9 * self.mean[...] + 0.1 * y.mean(0))
        return y


class _Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List([_Layer(8, rngs) for _ in range(5)])

    def __call__(self, x: jax.Array, scale: jax.Array, branch: jax.Array) -> jax.Array:
        for layer in self.layers[:3]:
            x = layer(x, scale, True) + x
        # Blocks inside control flow: the branch is picked on the host, the scan unrolled.
        x = jax.lax.cond(branch > 0, lambda x: self.layers[3](x, scale, False), lambda x: -x, x)

        def body(carry: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
            out = self.layers[4](carry, s, False)
            return out, out.sum()

        x, sums = jax.lax.scan(body, x, jnp.stack([scale, 2 * scale]))
        return x.sum() + sums.sum()


TOY_TERMS = 40 + 5 * 8
"""The toy step's sums: its loss adds 40 values behind five layers of 8-term dots."""


def _toy_step(graphdef, state, x, scale, branch):
    def loss(state, scale):
        net = nnx.merge(graphdef, state)
        value = net(x, scale, branch)
        return value, nnx.state(net)

    (value, new_state), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(state, scale)
    return value, new_state, grads


def test_block_program_equals_jit_through_control_flow_and_shares_programs():
    graphdef, state = nnx.split(_Net(nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (5, 8))
    for branch in (1, 0):
        args = (graphdef, state, x, jnp.float32(0.7), jnp.int32(branch))
        fused = jax.jit(_toy_step, static_argnums=0)(*args)
        program = BlockProgram(lambda *a: _toy_step(graphdef, *a), *args[1:])
        blocks = program(*args[1:])
        for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(blocks)):
            assert_close(b, a, terms=TOY_TERMS, why="toy step, blocks against fused")
    # The top-level layers are one block: the second and third share their forward and
    # backward programs (the first differs: its input has no tangent).
    calls = [item for item in program.plan.items if item.kind == "call"]
    assert len({id(item.run) for item in calls}) < len(calls)


def test_block_jit_retraces_per_signature_only():
    traces = []

    def f(x):
        traces.append(x.shape)
        return x * 2

    g = block_jit(f)
    for shape in ((2,), (2,), (3,)):
        np.testing.assert_array_equal(g(jnp.ones(shape)), 2 * np.ones(shape))  # 1 * 2: exact
    assert traces == [(2,), (3,)]


def _block_outputs(program: BlockProgram) -> int:
    return sum(len(item.outvars) for item in program.plan.items if item.kind == "call")


def test_remat_keeps_values_and_gradients_and_drops_residuals():
    graphdef, state = nnx.split(_Net(nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (5, 8))
    args = (state, x, jnp.float32(0.7), jnp.int32(1))
    expected = jax.jit(_toy_step, static_argnums=0)(graphdef, *args)
    outputs = {}
    for remat in ("none", "full", "convs", "none"):  # a policy never reuses another's trace
        program = compile_program(lambda *a: _toy_step(graphdef, *a), args, "blocks", remat=remat)
        got = program(*args)
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
            assert_close(b, a, terms=TOY_TERMS, why=f"toy step, remat {remat} against fused")
        outputs.setdefault(remat, set()).add(_block_outputs(program))
    # "convs" keeps the matrix products (as it keeps convolutions), "full" only inputs.
    (full,), (convs,), (none,) = outputs["full"], outputs["convs"], outputs["none"]
    assert full < convs < none
    with pytest.raises(ValueError, match="remat must be one of"):
        compile_program(_toy_step, args, "blocks", remat="some")


def test_auto_execution_is_blocks_on_cpu_and_auto_remat_follows_it():
    assert resolve_execution("auto") == "blocks"
    assert resolve_execution("fused") == "fused"
    with pytest.raises(ValueError, match="execution must be one of"):
        resolve_execution("fast")
    assert resolve_remat("auto", "auto") == resolve_remat("auto", "blocks") == "convs"
    assert resolve_remat("auto", "fused") == "none"
    assert resolve_remat("full", "fused") == "full"


def _search(name: str, tiny_npz: str, extra: tuple[str, ...] = ()):
    config = load_config(
        name,
        [
            "model.channels=4",
            "model.layers=1",
            "search.batch_size=16",
            f"data.name=npz:{tiny_npz}",
            *extra,
        ],
    )
    dataset = load_dataset(config.data.name, None, None)
    setup = build_setup(config, dataset, steps_per_epoch=4)
    strategy = STRATEGIES.get(config.search.strategy)(setup, strategy_options(config.search))
    order = np.arange(len(dataset.x_train))
    stream = batches(dataset.x_train, dataset.y_train, order, config.search.batch_size)
    data = [jax.device_put(next(stream)) for _ in range(4)]
    return strategy, data


FORWARD_TERMS = 16 * 8 * 8
"""The longest sum of a tiny digits network's forward (and of its weights' gradients): a
BatchNorm statistic, or a conv kernel's gradient, over the batch's 16 8x8 maps."""
ALPHA_GRAD_TERMS = 16 * (8 * 8 * 4 + 4 * 4 * 8 + 2 * 2 * 16)
"""The longest sum behind an alpha's gradient on the tiny NB201 supernet (C4, one cell a
stage): the cells share the alphas, so an op weight sums a product per activation of
the batch in all three (8x8x4, 4x4x8 and 2x2x16)."""


def _run_steps(strategy, data, execution, remat="none"):
    state = strategy.init(jax.random.PRNGKey(0))
    step = compile_program(strategy.step, (state, data[0], data[1]), execution, remat=remat)
    losses = []
    for train, val in ((data[0], data[1]), (data[2], data[3]), (data[1], data[0])):
        state, metrics = step(state, train, val)
        losses.append([float(metrics[k]) for k in ("train_loss", "val_loss")])
    return state, np.array(losses)


@pytest.mark.parametrize(
    "name, remat, extra, kinked",
    [
        ("darts_nb201_digits", "none", (), False),
        # Rematerialised blocks under second-order autodiff, and inside a switch.
        ("darts2_nb201_digits", "full", (), True),
        ("gdas_nb201_digits", "full", (), False),
        # The optimizer's pullback as a program of its own, compiled without fusion.
        ("darts2_nb201_digits", "convs", ("search.darts.hessian=finite_difference",), False),
    ],
)
def test_search_steps_agree_in_both_modes(name, remat, extra, kinked, tiny_npz):
    """The fused step (keeping every residual) against the block step (with `remat`)."""
    strategy, data = _search(name, tiny_npz, extra)
    fused_state, fused_losses = _run_steps(strategy, data, "fused")
    block_state, block_losses = _run_steps(strategy, data, "blocks", remat)
    why = "losses of 3 steps: forward sums, and weights stepped on gradients of such sums"
    assert_close(block_losses, fused_losses, terms=FORWARD_TERMS, why=why)
    start = strategy.init(jax.random.PRNGKey(0)).arch
    alphas = [jax.tree.leaves(s) for s in (start, fused_state.arch, block_state.arch)]
    for a0, a, b in zip(*alphas):
        if kinked:
            # The exact hypergradient jumps where a ReLU or max-pool switches: here states
            # 1e-8 apart give second steps' hypergradients 5e-3 (6%) apart, so the two
            # programs' rounding can end 3 steps up to 4.5e-5 apart. A third of the lr
            # (3e-4) bounds that; the gradients of one state are compared tightly in
            # test_second_order_architecture_gradient_is_the_same_under_every_remat.
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)
        else:
            # Adam passes its gradients' rounding on in proportion to its update.
            a0, a, b = (np.asarray(v, np.float64) for v in (a0, a, b))
            why = "alpha updates of 3 steps, blocks against fused"
            assert_close(b - a0, a - a0, terms=ALPHA_GRAD_TERMS, why=why)
    assert strategy.derive(block_state) == strategy.derive(fused_state)


def test_train_steps_agree_in_both_modes(tiny_npz):
    config = load_config(
        "retrain_digits",
        [
            "model.channels=4",
            "model.layers=3",
            "train.batch_size=16",
            "train.auxiliary=true",
            "train.drop_path=0.2",
            f"data.name=npz:{tiny_npz}",
        ],
    )
    dataset = load_dataset(config.data.name, None, None)
    trainer = build_trainer(config, DARTS_V2, dataset)
    order = np.arange(len(dataset.x_train))
    stream = batches(dataset.x_train, dataset.y_train, order, config.train.batch_size)
    data = [jax.device_put(next(stream)) for _ in range(3)]
    results = {}
    for execution in ("fused", "blocks"):
        state = trainer.init(jax.random.PRNGKey(0))
        step = compile_program(trainer.step, (state, data[0]), execution)
        losses = []
        for batch in data:
            state, metrics = step(state, batch)
            losses.append(float(metrics["train_loss"]))
        results[execution] = (np.array(losses), state)
    why = "losses of 3 steps: forward sums, and weights stepped on gradients of such sums"
    assert_close(results["blocks"][0], results["fused"][0], terms=FORWARD_TERMS, why=why)
    for a, b in zip(jax.tree.leaves(results["fused"][1]), jax.tree.leaves(results["blocks"][1])):
        why = "train state after 3 steps: gradients and BN statistics over the batch"
        assert_close(b, a, terms=FORWARD_TERMS, why=why)


def test_second_order_architecture_gradient_is_the_same_under_every_remat(tiny_npz):
    """Exact second-order DARTS' hypergradient (forward over reverse through the blocks)
    with blocks that keep everything, their convolutions' outputs, or only their inputs."""
    from nasax.search.strategy import FunctionalSupernet
    from nasax.search.unrolled import unrolled_arch_grad

    _, data = _search("darts2_nb201_digits", tiny_npz)
    config = load_config(
        "darts2_nb201_digits",
        ["model.channels=4", "model.layers=1", "search.batch_size=16", f"data.name=npz:{tiny_npz}"],
    )
    setup = build_setup(config, load_dataset(config.data.name, None, None), steps_per_epoch=4)
    net = FunctionalSupernet.create(setup)
    state = net.init(jax.random.PRNGKey(0))

    def hypergradient(state, train, val):
        x_train = setup.preprocess(train, state.rng, True)
        x_val = setup.preprocess(val, state.rng, True)
        grad, _ = unrolled_arch_grad(
            net, setup, state, x_train, train["label"], x_val, val["label"], hessian="exact"
        )
        return grad

    grads = {
        remat: jax.tree.leaves(
            compile_program(hypergradient, (state, data[0], data[1]), "blocks", remat=remat)(
                state, data[0], data[1]
            )
        )
        for remat in ("none", "convs", "full")
    }
    scale = max(float(np.abs(g).max()) for g in grads["none"])
    assert scale > 1e-3
    for remat in ("convs", "full"):
        for a, b in zip(grads["none"], grads[remat]):
            why = f"hypergradient, remat {remat} against none"
            assert_close(b, a, terms=ALPHA_GRAD_TERMS, magnitude=scale, why=why)


def test_a_separate_program_runs_as_one_call_compiled_as_its_tag_says():
    x = jnp.linspace(-1.0, 1.0, 64).reshape(8, 8)

    def glue(x):
        return jnp.tanh(x * 2.0 + 1.0).sum(axis=0) * x.mean()

    def step(x):
        return separate_program(glue, UNFUSED)(x) + 1.0

    program = BlockProgram(step, x)
    # A mean of 64 values of |x| <= 1 that cancel to 0, times a sum of 8 tanh, plus 1.
    why = "separate program against jit"
    assert_close(program(x), jax.jit(step)(x), terms=64 + 8 + 1, magnitude=1 + 8 * 0.5, why=why)
    assert [item.kind for item in program.plan.items] == ["call", "segment"]

    def fused_ops(hlo: str) -> list[str]:
        """Fusions of several ops (XLA's CPU backend wraps each lone op in one of its own)."""
        names = re.findall(r"%([\w.-]+) = [^=]*? fusion\(", hlo)
        return [n for n in names if not n.startswith("wrapped_")]

    assert fused_ops(jax.jit(glue).lower(x).compile().as_text())  # fused by default
    assert not fused_ops(program.as_text())  # on CPU the tag turns fusion off
    with pytest.raises(ValueError, match="tag must be one of"):
        separate_program(glue, "fast")


UNTESTED_JAX = """
import importlib.metadata, sys
real = importlib.metadata.version
importlib.metadata.version = lambda name: "0.14.0" if name in ("jax", "jaxlib") else real(name)
from nasax.app.cli import _one_line_warnings
_one_line_warnings()
import nasax.engine.jax_internals
"""


def test_an_untested_jax_gets_one_line_naming_the_tested_range():
    """jax_internals checks the installed JAX against the tested range at import; the
    `nasax` command prints that as one line (a plain warning elsewhere)."""
    import subprocess
    import sys

    from nasax.engine import jax_internals

    done = subprocess.run(
        [sys.executable, "-c", UNTESTED_JAX], capture_output=True, text=True, check=True
    )
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("nasax: warning: nasax is tested with jax>=")
    assert jax_internals.tested_range() in lines[0] and "jax 0.14.0" in lines[0]
    assert jax_internals.untested_versions() == []  # the installed JAX is a tested one
