"""Zero-cost proxies against hand computations, the one-program scorer against each cell's
own network, batch-order invariance, and a scoring that resumes after kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nasax.core.errors import ConfigError
from nasax.engine.taps import tap
from nasax.loop.data import load_dataset
from nasax.search.options import load_config, validate_config
from nasax.search.proxies import (
    PROXIES,
    cross_entropy,
    fisher,
    get_proxy,
    grad_norm,
    grasp,
    jacob_cov,
    nwot,
    rank_vote,
    snip,
    synflow,
    zen,
    zen_draws,
    zen_of,
)
from nasax.search.scoring import (
    ScoringNetwork,
    _proxy_scores,
    cell_apply,
    proxy_program,
    read_cells,
    sample_cells,
    score_batch,
    scoring_network,
    stack_cells,
)
from nasax.search.single_path import genotype_paths, path_sampler
from nasax.search.strategy import FunctionalSupernet
from nasax.search.task import build_setup, run_search
from nasax.search.zero_cost import _SCORE_KEY, ranked_cells
from nasax.supernet.genotypes import Genotype
from nasax.supernet.skeletons import skeleton_of
from nasax.supernet.spaces import get_space

KEY = jax.random.PRNGKey(0)
NEURAL = ("synflow", "grad_norm", "snip", "grasp", "jacob_cov", "fisher", "nwot")


def _linear2(params, x, train):
    return x.reshape(x.shape[0], -1) @ params["w1"] @ params["w2"]


def _mlp(params, x, train):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"]


def _mlp_params(seed=0, d=6, h=5, k=3):
    r = np.random.default_rng(seed)
    return {
        "w1": jnp.asarray(r.normal(size=(d, h))),
        "b1": jnp.asarray(r.normal(size=h)),
        "w2": jnp.asarray(r.normal(size=(h, k))),
    }


def _batch(seed=1, n=8, d=6, k=3):
    r = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(r.normal(size=(n, 1, d, 1))),
        "label": jnp.asarray(r.integers(0, k, n), jnp.int32),
    }


def test_synflow_of_a_two_layer_linear_network_is_its_closed_form():
    """R = 1ᵀ|W1||W2|1 is linear in each layer, so Σ θ ∂R/∂θ = 2R."""
    r = np.random.default_rng(0)
    params = {"w1": jnp.asarray(r.normal(size=(6, 4))), "w2": jnp.asarray(r.normal(size=(4, 3)))}
    expected = 2 * np.ones(6) @ np.abs(np.asarray(params["w1"])) @ np.abs(params["w2"]) @ np.ones(3)
    assert float(synflow(_linear2, params, _batch(), KEY)) == pytest.approx(expected, rel=1e-6)


def test_snip_and_grad_norm_of_a_linear_softmax_are_the_hand_gradient():
    r = np.random.default_rng(2)
    w = r.normal(size=(6, 3))
    batch = _batch()
    x = np.asarray(batch["image"]).reshape(8, -1)
    logits = x @ w
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = x.T @ (p - np.eye(3)[np.asarray(batch["label"])]) / len(x)

    def apply(params, images, train):
        return images.reshape(images.shape[0], -1) @ params["w"]

    params = {"w": jnp.asarray(w), "bias": jnp.ones(3)}  # 1-D leaves are not summed
    assert float(snip(apply, params, batch, KEY)) == pytest.approx(np.abs(w * grad).sum(), 1e-6)
    assert float(grad_norm(apply, params, batch, KEY)) == pytest.approx(np.linalg.norm(grad), 1e-6)


def test_grasp_is_minus_theta_times_the_hessian_gradient_product():
    params, batch = _mlp_params(), _batch()
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def loss(v):
        return cross_entropy(_mlp, unravel(v), batch)

    g = jax.grad(loss)(flat)
    mask = jax.flatten_util.ravel_pytree(
        jax.tree.map(lambda p: jnp.full(p.shape, p.ndim >= 2), params)
    )[0]
    hg = jax.hessian(loss)(flat) @ (g * mask)
    expected = -float(jnp.sum(mask * flat * hg))
    assert float(grasp(_mlp, params, batch, KEY)) == pytest.approx(expected, rel=1e-6)


def test_jacob_cov_is_the_correlation_spectrum_of_per_image_jacobians():
    params, batch = _mlp_params(d=16, h=12), _batch(n=6, d=16)  # full-rank Jacobians
    jac = np.stack(
        [
            np.asarray(jax.grad(lambda x: jnp.sum(_mlp(params, x[None], False)))(x)).ravel()
            for x in batch["image"]
        ]
    )
    v = np.linalg.eigvalsh(np.corrcoef(jac))
    expected = -np.sum(np.log(v + 1e-5) + 1 / (v + 1e-5))
    assert float(jacob_cov(_mlp, params, batch, KEY)) == pytest.approx(expected, rel=1e-4)


def _tapped_mlp(params, x, train):
    """A two-layer ReLU network reporting to taps where the supernet's layers do."""
    z = tap("linear", x.reshape(x.shape[0], -1) @ params["w1"], params["w1"].shape[0])
    return tap("linear", jax.nn.relu(tap("relu", z)) @ params["w2"], params["w2"].shape[0])


def _softmax(z):
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def test_fisher_is_half_the_mean_squared_activation_gradient_product_per_unit():
    params, batch = _mlp_params(h=7), _batch()
    w1, w2 = (np.asarray(params[k], np.float64) for k in ("w1", "w2"))
    x = np.asarray(batch["image"], np.float64).reshape(8, -1)
    z1 = x @ w1
    z2 = np.maximum(z1, 0) @ w2
    g2 = (_softmax(z2) - np.eye(3)[np.asarray(batch["label"])]) / len(x)
    g1 = (g2 @ w2.T) * (z1 > 0)
    # each channel counted once per weight feeding it (fan-in 6, then 7)
    expected = sum(
        0.5 * fan_in * np.sum(np.mean((z * g) ** 2, axis=0))
        for z, g, fan_in in ((z1, g1, 6), (z2, g2, 7))
    )
    got = float(fisher(_tapped_mlp, params, batch, KEY))
    assert got == pytest.approx(expected, rel=1e-4)


def test_nwot_is_the_log_determinant_of_the_binary_code_kernel():
    params, batch = _mlp_params(h=40), _batch()
    x = np.asarray(batch["image"], np.float64).reshape(8, -1)
    codes = (x @ np.asarray(params["w1"], np.float64) > 0).astype(np.float64)
    kernel = codes @ codes.T + (1 - codes) @ (1 - codes).T
    sign, expected = np.linalg.slogdet(kernel)
    assert sign > 0
    assert float(nwot(_tapped_mlp, params, batch, KEY)) == pytest.approx(expected, rel=1e-4)


def _zen_net(params, x, train):
    """A linear layer, a BatchNorm on the batch, ReLU features and a classifier."""
    z = x.reshape(x.shape[0], -1) @ params["w1"]
    var = tap("bn_var", jnp.var(z, axis=0))
    features = tap("features", jax.nn.relu((z - jnp.mean(z, axis=0)) / jnp.sqrt(var + 1e-5)))
    return features @ params["w2"]


def test_zen_is_the_feature_gap_under_gaussian_weights_plus_the_bn_log_deviations():
    params, batch = _mlp_params(h=9), _batch()
    weights, x, mixed = zen_draws(params, batch["image"].shape, batch["image"].dtype, KEY)
    assert float(jnp.std(weights["w1"])) == pytest.approx(1.0, abs=0.5)  # redrawn
    np.testing.assert_array_equal(weights["b1"], params["b1"])  # 1-D leaves kept

    def features(images):
        z = np.asarray(images, np.float64).reshape(8, -1) @ np.asarray(weights["w1"], np.float64)
        return np.maximum((z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5), 0), z.var(0)

    (f1, var), (f2, _) = features(x), features(mixed)
    expected = np.log(np.mean(np.abs(f1 - f2).sum(1))) + 0.5 * np.log(var.mean())
    assert float(zen(_zen_net, params, batch, KEY)) == pytest.approx(expected, rel=1e-4)
    assert float(zen_of(_zen_net, weights, x, mixed)) == pytest.approx(expected, rel=1e-4)


def test_rank_vote_averages_ranks():
    scores = {"a": [3.0, 1.0, 2.0], "b": [1.0, 2.0, 3.0], "c": [float("nan"), 2.0, 1.0]}
    np.testing.assert_allclose(rank_vote(scores, ["a", "b", "c"]), [(2 + 0 + 0) / 3, 1, 4 / 3])


@pytest.fixture(scope="module")
def tiny(tiny_npz):
    digits_dataset = load_dataset(f"npz:{tiny_npz}")
    space = get_space("nb201")
    net = scoring_network(
        space,
        channels=4,
        layers=1,
        image_shape=digits_dataset.image_shape,
        num_classes=10,
        key=KEY,
        stem_multiplier=1,
    )
    return space, net, score_batch(digits_dataset, 16, 0)


def _own_network_apply(space, net, genotype):
    """The cell's own discrete network, holding the supernet's weights of its ops."""
    model = skeleton_of(space).discrete_network(
        genotype, channels=4, layers=1, num_classes=10, in_channels=1, rngs=nnx.Rngs(params=1)
    )
    path = genotype_paths(genotype, space)["normal"]
    positions = [k for k, op in enumerate(space.ops) if op != "none"]  # the supernet's ops/j
    supernet = {tuple(map(str, p)): v for p, v in nnx.to_flat_state(net.params)}
    own = nnx.state(model, nnx.Param)
    flat = []
    for p, v in nnx.to_flat_state(own):
        key = tuple(map(str, p))
        if key[2:3] == ("edges",) and key[4] == "op":  # cells/i/edges/e/op/...
            key = (*key[:4], "ops", str(positions.index(path[int(key[3])])), *key[5:])
        if key not in supernet:  # only the affine scale and bias of the edges' BN
            assert key[-1] in ("scale", "bias") and key[2] == "edges", key
        flat.append((p, supernet.get(key, v)[...]))
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    params = nnx.from_flat_state(flat)

    def apply(params, images, train):
        network = nnx.merge(graphdef, params, rest, copy=True)
        return network(images, train=train)

    return apply, params


def test_the_one_program_scorer_equals_each_cells_own_network(tiny):
    space, net, batch = tiny
    cells = sample_cells(space, 2, seed=4)
    for name in NEURAL:
        scored = proxy_program(net, name)(stack_cells(cells, space), batch, KEY)
        for k, genotype in enumerate(cells):
            apply, params = _own_network_apply(space, net, genotype)
            own_fn = jax.jit(partial(get_proxy(name).fn, apply))  # one program, not op by op
            if get_proxy(name).x64:
                with jax.enable_x64(True):
                    wide = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
                    b = {**batch, "image": jnp.asarray(batch["image"], jnp.float64)}
                    own = float(own_fn(wide, b, KEY))
            else:
                own = float(own_fn(params, batch, KEY))
            assert scored[k] == pytest.approx(own, rel=2e-3, abs=1e-6), (name, k)
    # Zen: the same Gaussian draws, mapped onto each cell's own network
    images = batch["image"]
    weights, x, mixed = zen_draws(net.params, images.shape, images.dtype, KEY)
    scored = proxy_program(net, "zen")(stack_cells(cells, space), batch, KEY)
    drawn = ScoringNetwork(net.space, net.graphdef, net.arch, weights, net.stats)
    for k, genotype in enumerate(cells):
        apply, params = _own_network_apply(space, drawn, genotype)
        own = float(jax.jit(partial(zen_of, apply))(params, x, mixed))
        assert scored[k] == pytest.approx(own, rel=2e-3, abs=1e-5), ("zen", k)


def test_scores_do_not_depend_on_the_batchs_order(tiny):
    space, net, batch = tiny
    cells = stack_cells(sample_cells(space, 2, seed=5), space)
    order = np.random.default_rng(0).permutation(16)
    shuffled = {k: v[order] for k, v in batch.items()}
    for name in NEURAL:
        program = proxy_program(net, name)
        np.testing.assert_allclose(
            program(cells, shuffled, KEY), program(cells, batch, KEY), rtol=1e-3, err_msg=name
        )


def test_table_proxies_are_the_cells_cost(tiny):
    space, net, batch = tiny
    cells = sample_cells(space, 4, seed=6)
    params = proxy_program(net, "params")(stack_cells(cells, space), batch, KEY)
    assert list(params) == [net.table("params").of_genotype(g, space) for g in cells]


def test_cells_files_take_nb201_strings_and_genotype_json(tmp_path):
    space = get_space("nb201")
    cell = "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"
    genotype = Genotype.from_arch_string(cell, "nb201")
    path = tmp_path / "cells.txt"
    path.write_text(f"# two cells\n{cell}\n\n{json.dumps(genotype.to_dict())}\n")
    assert read_cells(path, space) == [genotype, genotype]
    path.write_text("|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|\n")
    with pytest.raises(ConfigError, match="line 1"):
        read_cells(path, space)
    assert len({c.to_arch_string() for c in sample_cells(space, 15_625, 0)}) == 15_625


def _score_args(tiny_npz, out, *extra):
    return [
        "score",
        "darts_nb201_digits",
        "--set",
        f"data.name=npz:{tiny_npz}",
        "--set",
        "model.channels=4",
        "--set",
        "model.layers=1",
        "--sample",
        "48",
        "--proxy",
        "synflow,snip,params",
        "--batch",
        "8",
        "--out",
        str(out),
        *extra,
    ]


def test_nasax_score_resumes_after_kill_9(tiny_npz, tmp_path):
    from nasax.app.cli import main

    whole = tmp_path / "whole.jsonl"
    assert main([*_score_args(tiny_npz, whole), "--quiet"]) == 0
    rows = [json.loads(line) for line in whole.read_text().splitlines()]
    assert len(rows) == 48 and set(rows[0]) == {"genotype", "synflow", "snip", "params"}
    space = get_space("nb201")
    assert [Genotype.from_arch_string(r["genotype"], "nb201") for r in rows] == sample_cells(
        space, 48, 0
    )
    killed = tmp_path / "killed.jsonl"
    cmd = [sys.executable, "-m", "nasax.app.cli", *_score_args(tiny_npz, killed), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while proc.poll() is None and (not killed.exists() or killed.stat().st_size == 0):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < len(killed.read_text().splitlines()) < 48  # killed mid-scoring
    with open(killed, "a") as f:
        f.write('{"genotype": "|torn')  # what a kill in the middle of a write leaves
    assert main([*_score_args(tiny_npz, killed), "--quiet"]) == 0
    assert killed.read_text() == whole.read_text()
    other = _score_args(tiny_npz, killed)
    other[other.index("synflow,snip,params")] = "synflow,grasp"
    assert main([*other, "--quiet"]) != 0


def test_cell_apply_runs_one_cell(tiny):
    space, net, batch = tiny
    paths = {"normal": jnp.asarray(genotype_paths(sample_cells(space, 1, 0)[0], space)["normal"])}
    logits = cell_apply(net, paths)(net.params, batch["image"], False)
    assert logits.shape == (16, 10) and bool(jnp.all(jnp.isfinite(logits)))


ZERO_COST = [
    "model.channels=4",
    "model.layers=1",
    "search.batch_size=16",
    "search.zero_cost.cells=24",
    "search.zero_cost.proxy=synflow",
    "run.progress=false",
    "run.plots=false",
]


def test_zero_cost_search_keeps_the_best_scored_cell_within_the_budget(tiny_npz, tmp_path):
    sets = [*ZERO_COST, f"data.name=npz:{tiny_npz}"]
    summary = run_search(load_config("zero_cost_nb201_digits", sets), tmp_path / "free")
    space = get_space("nb201")
    found = Genotype.from_dict(summary["genotype"])
    assert summary["select_calls"] == 1
    # The same ranking by hand: the 24 cells, scored with their own program.
    budget = ["search.cost.metric=params", "search.cost.target=2e5"]
    budgeted = run_search(
        load_config("zero_cost_nb201_digits", [*sets, *budget]), tmp_path / "budget"
    )
    cost = budgeted["cost"]
    assert cost["within_target"] and cost["params"] <= 200_000
    Genotype.from_dict(budgeted["genotype"]).validate(space, searched=True)
    found.validate(space, searched=True)


def test_ranked_cells_are_best_first_and_warm_evolution_starts_from_them(tiny_npz, tmp_path):
    sets = [
        f"data.name=npz:{tiny_npz}",
        "model.channels=4",
        "model.layers=1",
        "search.epochs=1",
        "search.batch_size=16",
        "search.evolution.population=4",
        "search.evolution.sample_size=2",
        "search.evolution.cycles=2",
        "search.evolution.select_batches=1",
        "search.evolution.warmup.proxy=snip",
        "search.evolution.warmup.pool=12",
        "run.progress=false",
        "run.plots=false",
    ]
    summary = run_search(load_config("evolution_nb201_digits", sets), tmp_path / "evo")
    assert summary["select_calls"] >= 1
    with pytest.raises(ConfigError, match=r"search\.cost"):
        load_config("zero_cost_nb201_digits", ["search.zero_cost.proxy=params"])
    with pytest.raises(ConfigError, match="must be 0 for strategy 'zero_cost'"):
        load_config("zero_cost_nb201_digits", ["search.epochs=3"])
    with pytest.raises(ConfigError, match="unknown proxy 'synflo'"):
        load_config("zero_cost_nb201_digits", ["search.zero_cost.proxy=synflo"])


def test_ranked_cells_sort_the_pool_by_each_cells_own_score(tiny_npz):
    config = validate_config(
        {
            "data": {"name": f"npz:{tiny_npz}"},
            "model": {"space": "nb201", "stem_multiplier": 1, "channels": 4, "layers": 1},
            "search": {"strategy": "zero_cost", "epochs": 0, "batch_size": 16},
        }
    )
    dataset = load_dataset(config.data.name)
    setup = build_setup(config, dataset, steps_per_epoch=1)
    net = FunctionalSupernet.create(setup)
    state = net.init(KEY)
    batch = {"image": jnp.asarray(dataset.x_train[:16]), "label": jnp.asarray(dataset.y_train[:16])}
    sample_many = path_sampler(setup.space)
    cells, scores = ranked_cells(net, state, batch, 10, "snip", 4, sample_many)
    assert list(scores) == sorted(scores, reverse=True) and len(set(scores)) > 1
    assert len({tuple(c) for c in cells["normal"]}) > 1
    # Scored again one at a time, on the same fresh weights and batch: the same order.
    init_key, _, score_key = jax.random.split(jax.random.fold_in(state.rng, _SCORE_KEY), 3)
    fresh = net.init(init_key)
    scoring = ScoringNetwork(setup.space, net.graphdef, fresh.arch, fresh.params, fresh.batch_stats)
    x = setup.preprocess(batch, score_key, False)
    alone = [
        float(
            snip(
                cell_apply(scoring, {"normal": jnp.asarray(c)}),
                fresh.params,
                {**batch, "image": x},
                KEY,
            )
        )
        for c in cells["normal"]
    ]
    np.testing.assert_allclose(alone, scores, rtol=1e-3)
    # A ranking from another state (new weights, another key) reuses the compiled program.
    compiled = _proxy_scores._cache_size()
    later = state._replace(rng=jax.random.fold_in(state.rng, 1))
    ranked_cells(net, later, batch, 10, "snip", 4, sample_many)
    assert _proxy_scores._cache_size() == compiled


def test_nasax_score_lists_every_proxy_with_its_paper(capsys):
    from nasax.app.cli import main

    assert main(["score", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(PROXIES.names())
    assert all(get_proxy(line.split()[0]).paper in line for line in lines)
