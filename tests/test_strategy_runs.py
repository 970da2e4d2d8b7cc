"""Every strategy runs a tiny NAS-Bench-201 search (`run_search`, what `nasax search`
calls) and yields a valid genotype, with its step compiled as one XLA program that never
calls back to the host.

(DARTS runs through the CLI in test_cli and test_nb201; its second-order step, the
costliest to compile, is checked directly in test_darts_second_order.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from nasax.app.cli import main
from nasax.loop.programs import ProgramCache
from nasax.search import task as loop
from nasax.search.options import load_config, strategy_options
from nasax.supernet.genotypes import Genotype
from tests.tolerance import assert_close

TINY_NB201 = [
    "model.space=nb201",
    "model.stem_multiplier=1",
    "model.channels=4",
    "model.layers=1",
    "search.epochs=2",
    "search.batch_size=16",
    "run.log_every=2",
    "run.progress=false",
    "run.plots=false",
]

STRATEGIES = {
    "gdas": ["search.strategy=gdas"],
    "snas": ["search.strategy=snas"],
    "drnas": ["search.strategy=drnas"],
    "darts_minus": ["search.strategy=darts_minus"],
    "pcdarts": ["search.strategy=pcdarts", "search.pcdarts.arch_warmup_epochs=1"],
    "random_ws": ["search.strategy=random_ws", "search.random_ws.candidates=8"],
    "enas": [
        "search.strategy=enas",
        "search.enas.controller_steps=3",
        "search.enas.aggregate=4",
        "search.enas.candidates=8",
    ],
    "evolution": [
        "search.strategy=evolution",
        "search.evolution.population=6",
        "search.evolution.sample_size=3",
        "search.evolution.cycles=6",
    ],
}


def _search(name: str, tiny_npz: str, out, *extra: str) -> tuple:
    """Runs the strategy `name` as `nasax search` does; (its compiled step, its summary)."""
    overrides = [*TINY_NB201, f"data.name=npz:{tiny_npz}", *STRATEGIES[name], *extra]
    programs = ProgramCache()
    loop.run_search(load_config("darts_nb201_digits", overrides), out, programs=programs)
    step, *_ = programs.latest()  # the programs this run compiled
    return step, json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_searches_as_one_program(name, tiny_npz, tmp_path):
    step, summary = _search(name, tiny_npz, tmp_path / name)
    genotype = Genotype.load(tmp_path / name / "genotype.json")
    assert genotype.space == "nb201"
    assert summary["genotype_text"] == genotype.to_arch_string()
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    # One program per step, with no host callback inside it.
    hlo = step.as_text()
    assert "callback" not in hlo.lower()
    metrics = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
    steps = [m for m in metrics if "train_loss" in m]
    assert steps and all(np.isfinite(m["train_loss"]) for m in steps)
    # `val_loss` is the cross-entropy; a regulariser is logged apart, with the objective.
    if name == "drnas":
        for m in steps:
            objective = m["val_loss"] + m["concentration_reg"]
            assert_close(m["val_objective"], objective, terms=3, why="float32 sums of means")
    else:
        assert not any("val_objective" in m or "train_objective" in m for m in steps)
    alphas = np.load(tmp_path / name / "alphas.npz")
    if name == "gdas":
        assert steps[0]["tau"] == 10.0  # tau_max - (tau_max - tau_min) * 0: exact
    if name == "pcdarts":
        # The warm-up epoch leaves alphas and betas where they started; then they train.
        assert alphas["alpha_normal"].shape == (2, 6, 5)
        assert alphas["beta_normal"].shape == (2, 6)
        assert np.abs(alphas["alpha_normal"][0]).max() < 0.01  # 1e-3 scale initialisation
        # Trained: Adam steps of about the lr (3e-4), far past 1e-5 |a| + 1e-8.
        assert not np.allclose(alphas["alpha_normal"][1], alphas["alpha_normal"][0])
    if name in ("random_ws", "evolution"):
        assert "alpha_normal" not in alphas.files
    if name == "enas":
        # After each epoch of weight steps, a controller phase of 3 REINFORCE steps.
        phases = [m for m in metrics if m["kind"] == "phase"]
        assert [p["epoch"] for p in phases] == [1, 2]
        assert all(p["phase_steps"] == 3 and 0 <= p["reward"] <= 1 for p in phases)
        assert all(np.isfinite(p["controller_objective"]) for p in phases)
        # The per-epoch record is the controller's op frequency per edge: rows sum to one.
        assert alphas["normal"].shape == (2, 6, 5)
        # Counts over 256 samples: multiples of 1/256 that add up to 1 exactly.
        np.testing.assert_array_equal(alphas["normal"].sum(-1), 1.0)


def test_evolution_starts_from_another_runs_weights(tiny_npz, tmp_path, capsys):
    """`weights_from` loads exactly the weights and BN statistics another run trained;
    with `search.epochs=0` evolution only scores cells with them. A run of another
    width is refused with a message saying what must match."""
    import jax

    from nasax.core.checkpoint import Checkpoints
    from nasax.loop.data import load_dataset
    from nasax.search.options import load_config
    from nasax.search.single_path import load_supernet_weights
    from nasax.search.strategy import STRATEGIES as BUILDERS

    trained_dir = tmp_path / "trained"
    _search("random_ws", tiny_npz, trained_dir)
    _, summary = _search(
        "evolution",
        tiny_npz,
        tmp_path / "evolved",
        "search.epochs=0",
        f"search.evolution.weights_from={trained_dir}",
    )
    assert summary["steps"] == 0
    Genotype.load(tmp_path / "evolved" / "genotype.json").validate()

    overrides = [*TINY_NB201, f"data.name=npz:{tiny_npz}", *STRATEGIES["random_ws"]]
    config = load_config("darts_nb201_digits", overrides)
    dataset = load_dataset(config.data.name)
    setup = loop.build_setup(config, dataset, steps_per_epoch=4)
    fresh = BUILDERS.get("random_ws")(setup, strategy_options(config.search)).init(
        jax.random.PRNGKey(7)
    )
    checkpoints = Checkpoints(trained_dir / "checkpoints")
    trained, _ = checkpoints.restore(fresh)
    checkpoints.close()
    loaded = load_supernet_weights(trained_dir / "checkpoints", fresh)
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(trained.params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(loaded.batch_stats), jax.tree.leaves(trained.batch_stats)):
        np.testing.assert_array_equal(a, b)
    assert int(loaded.step) == 0  # only the weights come over

    # The run's test figure is that of the cell it selected, with the shared weights.
    import jax.numpy as jnp

    from nasax.loop.runloop import evaluate
    from nasax.search.single_path import genotype_paths

    strategy = BUILDERS.get("random_ws")(setup, strategy_options(config.search))
    genotype = Genotype.load(trained_dir / "genotype.json")
    paths = {k: jnp.asarray(p) for k, p in genotype_paths(genotype, setup.space).items()}
    cell = jax.jit(lambda state, batch: strategy.evaluate_cell(state, paths, batch))
    got = evaluate(cell, trained, dataset.x_test, dataset.y_test, config.search.batch_size)
    reported = json.loads((trained_dir / "summary.json").read_text())
    assert got["accuracy"] == pytest.approx(reported["test_accuracy"])
    # Another program: the BN statistics over 16 8x8 maps, then a mean of 64 losses.
    why = "the selected cell's test loss, recomputed"
    assert_close(got["loss"], reported["test_loss"], terms=16 * 8 * 8 + 64, why=why)
    assert not np.array_equal(jax.tree.leaves(loaded.params)[0], jax.tree.leaves(fresh.params)[0])

    args = ["search", "darts_nb201_digits", "--out", str(tmp_path / "wider")]
    for item in [
        *overrides[:-1],
        *STRATEGIES["evolution"],
        "model.channels=6",
        "search.epochs=0",
        f"search.evolution.weights_from={trained_dir}",
    ]:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "does not fit this supernet" in err and "model.channels" in err


def test_enas_resumed_after_ctrl_c_in_its_controller_phase_matches_an_uninterrupted_run(
    tiny_npz, tmp_path, monkeypatch
):
    """Ctrl-C while the controller trains: the phase finishes, the epoch's checkpoint
    holds the controller, its optimizer and baseline, and the resumed run ends exactly as
    an uninterrupted one (every array of the last checkpoint, every logged figure)."""
    import os
    import signal

    from tests.test_reliability import last_checkpoint_arrays, metrics_without_timing

    _search("enas", tiny_npz, tmp_path / "reference")
    real_order = loop.epoch_order

    def order_then_interrupt(indices, seed, epoch, stream):
        if stream == 2 and epoch == 0:  # the first controller phase is starting
            os.kill(os.getpid(), signal.SIGINT)
        return real_order(indices, seed, epoch, stream)

    monkeypatch.setattr(loop, "epoch_order", order_then_interrupt)
    args = ["search", "darts_nb201_digits", "--out", str(tmp_path / "resumed")]
    for item in [*TINY_NB201, f"data.name=npz:{tiny_npz}", *STRATEGIES["enas"]]:
        args += ["--set", item]
    assert main(args) == 130
    monkeypatch.setattr(loop, "epoch_order", real_order)
    assert main([*args, "--resume"]) == 0

    step_a, arrays_a = last_checkpoint_arrays(tmp_path / "reference")
    step_b, arrays_b = last_checkpoint_arrays(tmp_path / "resumed")
    assert step_a == step_b and arrays_a.keys() == arrays_b.keys()
    assert any(k.startswith("controller/") for k in arrays_a)
    for key in arrays_a:
        np.testing.assert_array_equal(arrays_a[key], arrays_b[key], err_msg=key)

    def figures(run):
        return [
            {k: v for k, v in r.items() if k != "phase_steps_per_sec"}
            for r in metrics_without_timing(run)
        ]

    assert figures(tmp_path / "reference") == figures(tmp_path / "resumed")


TOY_STRATEGY = '''
"""A strategy written outside nasax: first-order DARTS whose architecture steps only
every `arch_every` weight steps."""

import jax
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from nasax.search.discretize import derive_genotype
from nasax.search.strategy import (
    FunctionalSupernet,
    Strategy,
    alphas_of,
    arch_update,
    register_strategy,
    step_metrics,
    weight_update,
)


class AlternateOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arch_every: int = Field(1, ge=1)


@register_strategy("toy_alternate", AlternateOptions)
def make_alternate(setup, options):
    net = FunctionalSupernet.create(setup)
    grad_of = lambda argnum: jax.value_and_grad(net.loss, argnums=argnum, has_aux=True)

    def step(state, train, val):
        rng = jax.random.fold_in(state.rng, state.step)
        x_train = setup.preprocess(train, rng, True)
        x_val = setup.preprocess(val, rng, True)
        (val_loss, (val_acc, _)), arch_grad = grad_of(2)(
            state.params, state.batch_stats, state.arch, x_val, val["label"]
        )
        stepped = arch_update(setup, state, arch_grad)
        now = state.step % options.arch_every == 0
        arch, arch_opt = jax.tree.map(
            lambda new, old: jnp.where(now, new, old), stepped, (state.arch, state.arch_opt)
        )
        (train_loss, (train_acc, stats)), grads = grad_of(0)(
            state.params, state.batch_stats, arch, x_train, train["label"]
        )
        params, weight_opt = weight_update(setup, state, grads)
        metrics = step_metrics(setup, state, grads, (train_loss, train_acc), (val_loss, val_acc))
        return state.stepped(params, stats, arch, weight_opt, arch_opt), metrics

    def arch_weights(state):
        return {f"alpha_{k}": np.asarray(a) for k, a in alphas_of(state.arch).items()}

    def derive(state):
        weights = {k[len("alpha_"):]: v for k, v in arch_weights(state).items()}
        return derive_genotype(weights, setup.space)

    return Strategy(net.init, step, net.evaluate, derive, arch_weights)
'''


def test_a_new_strategy_is_one_module_and_its_options_are_checked(tmp_path, tiny_npz, monkeypatch):
    """A strategy written in one file outside nasax registers its builder and options
    schema in one line; a config then names it, its section is checked and reaches the
    builder: arch_every beyond the run's 8 steps updates the alphas at step 0 only."""
    import importlib

    from nasax.core.errors import ConfigError
    from nasax.search.options import load_config

    (tmp_path / "toy_alternate.py").write_text(TOY_STRATEGY)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("toy_alternate")
    overrides = [*TINY_NB201, f"data.name=npz:{tiny_npz}", "search.strategy=toy_alternate"]
    with pytest.raises(ConfigError, match=r"search\.toy_alternate\.arch_evry"):
        load_config("darts_nb201_digits", [*overrides, "search.toy_alternate.arch_evry=3"])
    runs = {}
    for every in (1, 1000):
        config = load_config(
            "darts_nb201_digits", [*overrides, f"search.toy_alternate.arch_every={every}"]
        )
        assert strategy_options(config.search).arch_every == every
        summary = loop.run_search(config, tmp_path / f"every{every}")
        assert Genotype.from_dict(summary["genotype"]).space == "nb201"
        with np.load(tmp_path / f"every{every}" / "alphas.npz") as f:
            runs[every] = f["alpha_normal"]
    assert runs[1000].shape[0] == 2
    np.testing.assert_array_equal(runs[1000][0], runs[1000][1])  # no step after step 0
    assert np.abs(runs[1][1] - runs[1][0]).max() > 0  # every step moves them
