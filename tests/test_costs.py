"""Cost budgets: the tables against real networks, the expected cost's gradient, the
discretizer's hard limit, sampling within a budget, and the one-line errors."""

from __future__ import annotations

import itertools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nasax.core.config import CostConfig
from nasax.core.errors import ConfigError, NasaxError
from nasax.search.budget import Budget
from nasax.search.costs import CostTable, live_edges
from nasax.search.discretize import Limit, derive_cell, derive_genotype
from nasax.search.evolution import mutate_within
from nasax.search.options import load_config
from nasax.search.profiling import (
    Deploy,
    network_program,
    random_genotype,
    reference_genotype,
    static_profile,
)
from nasax.search.single_path import genotype_paths, paths_genotype, sample_paths
from nasax.search.task import run_search
from nasax.supernet.genotypes import DARTS_V2
from nasax.supernet.spaces import get_space
from tests.test_strategy_runs import STRATEGIES, TINY_NB201
from tests.tolerance import assert_close

SMALL = {
    "darts": Deploy(channels=8, layers=5, image_size=(8, 8), in_channels=1, num_classes=10),
    "nb201": Deploy(channels=4, layers=1, image_size=(8, 8), in_channels=1, num_classes=10),
}


@pytest.fixture(scope="module")
def profiles():
    return {name: static_profile(get_space(name), deploy) for name, deploy in SMALL.items()}


def _real_params(genotype, deploy) -> int:
    _, state = network_program(genotype, deploy)
    return sum(x.size for x in jax.tree.leaves(nnx.filter_state(state, nnx.Param)))


def _one_op_paths(space, k: int) -> dict[str, np.ndarray]:
    """Op k on each node's first kept edges (`none` on the others)."""
    path = np.full(space.n_edges, space.ops.index("none"))
    for node in range(space.n_nodes):
        ids = list(space.node_edges(node))
        path[ids[: space.edges_per_node or len(ids)]] = k
    return {kind: path for kind in space.cell_kinds}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_params_table_counts_every_op_as_the_real_network_does(name, profiles):
    space, deploy = get_space(name), SMALL[name]
    table = profiles[name].table("params")
    rng = np.random.default_rng(0)
    cells = [random_genotype(space, rng) for _ in range(3)]
    for k, op in enumerate(space.ops):  # one cell per op, on every edge it may hold
        if op == "none" and not space.derive_none:
            continue
        cells.append(reference_genotype(space, _one_op_paths(space, k)))
    for genotype in cells:
        assert table.of_genotype(genotype, space) == _real_params(genotype, deploy), genotype


def test_nb201_params_follow_the_published_formula():
    """At C16 N5 on 32x32x3, 10 classes: 73,306 + 243,040 per 3x3 conv + 28,000 per 1x1."""
    space = get_space("nb201")
    table = static_profile(space, Deploy(16, 5, (32, 32), 3, 10)).table("params")
    for n3, n1 in [(0, 0), (6, 0), (2, 3), (0, 6)]:
        ops = ["nor_conv_3x3"] * n3 + ["nor_conv_1x1"] * n1 + ["skip_connect"] * (6 - n3 - n1)
        paths = {"normal": np.array([space.ops.index(op) for op in ops])}
        assert table.of_genotype(reference_genotype(space, paths), space) == (
            73_306 + 243_040 * n3 + 28_000 * n1
        )


@pytest.mark.parametrize("name", sorted(SMALL))
def test_one_hot_weights_of_a_cell_give_its_cost(name, profiles):
    space = get_space(name)
    table = profiles[name].table("flops")
    for seed in range(4):
        genotype = random_genotype(space, np.random.default_rng(seed))
        paths = genotype_paths(genotype, space)
        one_hot = {k: jax.nn.one_hot(p, space.n_ops) for k, p in paths.items()}
        expected = float(table.expected(one_hot, space))
        by_paths = float(table.of_paths(paths))
        every_edge = CostTable("params", table.fixed, table.ops, space.name)  # no liveness
        assert expected == pytest.approx(by_paths, rel=1e-5)
        assert by_paths == pytest.approx(every_edge.of_genotype(genotype, space), rel=1e-5)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_expected_costs_gradient_matches_finite_differences(name, profiles):
    space = get_space(name)
    table = profiles[name].table("params")
    key = jax.random.PRNGKey(3)
    alphas = {
        k: jax.random.normal(jax.random.fold_in(key, i), (space.n_edges, space.n_ops))
        for i, k in enumerate(space.cell_kinds)
    }

    with jax.enable_x64(True):
        alphas64 = {k: a.astype(jnp.float64) for k, a in alphas.items()}

        def cost(a):
            return table.expected({k: jax.nn.softmax(v) for k, v in a.items()}, space)

        grad = jax.grad(cost)(alphas64)
        h = 1e-5
        for kind in space.cell_kinds:
            for e, o in [(0, 1), (space.n_edges - 1, space.n_ops - 1), (1, 3)]:
                up = {**alphas64, kind: alphas64[kind].at[e, o].add(h)}
                down = {**alphas64, kind: alphas64[kind].at[e, o].add(-h)}
                numeric = (cost(up) - cost(down)) / (2 * h)
                assert float(grad[kind][e, o]) == pytest.approx(float(numeric), rel=1e-6, abs=1e-6)


def _nb201_cells(space):
    for ops in itertools.product(range(space.n_ops), repeat=space.n_edges):
        yield {"normal": np.array(ops)}


def test_the_hard_limit_picks_the_best_cell_under_the_target_nb201(profiles):
    """Against all 15,625 cells: the limited cell is the best-ranked one within the target."""
    space = get_space("nb201")
    table = profiles["nb201"].table("params")
    rng = np.random.default_rng(1)
    weights = {"normal": rng.dirichlet(np.ones(space.n_ops), space.n_edges)}
    weights["normal"][:, space.ops.index("nor_conv_3x3")] += 1.0  # the argmax: all 3x3 convs
    argmax = derive_genotype(weights, space)
    target = 0.5 * (table.fixed + table.of_genotype(argmax, space))
    limited = derive_genotype(weights, space, limit=Limit(table, target))
    assert table.of_genotype(limited, space) <= target < table.of_genotype(argmax, space)
    log_w = np.log(weights["normal"])
    best = max(
        (p for p in _nb201_cells(space) if float(table.of_paths(p)) <= target),
        key=lambda p: log_w[np.arange(space.n_edges), p["normal"]].sum(),
    )
    assert limited == paths_genotype(best, space)


def test_the_hard_limit_keeps_darts_cells_under_the_target_and_changes_nothing_under_it(profiles):
    space = get_space("darts")
    table = profiles["darts"].table("params")
    rng = np.random.default_rng(2)
    weights = {k: rng.dirichlet(np.ones(space.n_ops), space.n_edges) for k in space.cell_kinds}
    for k in space.cell_kinds:
        weights[k][:, space.ops.index("sep_conv_5x5")] += 1.0
    argmax = derive_genotype(weights, space)
    cost = table.of_genotype(argmax, space)
    assert derive_genotype(weights, space, limit=Limit(table, cost)) == argmax
    cheapest, _ = table.cheapest(space)
    for target in np.linspace(cheapest, cost, 5)[:-1]:
        limited = derive_genotype(weights, space, limit=Limit(table, target), max_skip_connect=2)
        assert table.of_genotype(limited, space) <= target
        skips = sum(op == "skip_connect" for node in limited.normal for op, _ in node)
        assert skips <= 2
    with pytest.raises(ConfigError, match="no cell of space 'darts' costs at most"):
        derive_genotype(weights, space, limit=Limit(table, cheapest * 0.99))


def test_the_cheapest_cell_is_the_least_cost_the_limit_can_reach():
    """Latency prices of a fit may be negative: `cheapest` is the least `of_paths` cost
    over all NAS-Bench-201 cells (what the discretizer's limit and the samplers keep to),
    and its paths cost exactly that."""
    space = get_space("nb201")
    rng = np.random.default_rng(3)
    table = CostTable("latency", 0.09, {"normal": rng.normal(0.01, 0.02, (6, 5))}, "nb201", 0.05)
    table.ops["normal"][:, space.ops.index("none")] = 0.0
    cheapest, paths = table.cheapest(space)
    costs = [float(table.of_paths(p)) for p in _nb201_cells(space)]
    assert cheapest == pytest.approx(min(costs), abs=1e-6)
    assert float(table.of_paths(paths)) == pytest.approx(cheapest, abs=1e-6)


def test_derive_cell_is_what_the_limit_ranks_first(profiles):
    """Without a binding limit the ranking's best cell is the plain argmax cell."""
    space = get_space("darts")
    table = profiles["darts"].table("flops")
    weights = np.random.default_rng(4).dirichlet(np.ones(space.n_ops), space.n_edges)
    from nasax.search.discretize import derive_within

    limited = derive_within({"normal": weights, "reduce": weights}, space, Limit(table, 1e30))
    assert limited.normal == derive_cell(weights, space)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_sampling_and_mutation_never_return_a_cell_over_the_target(name, profiles):
    space = get_space(name)
    table = profiles[name].table("params")
    rng = np.random.default_rng(0)
    target = np.median([table.of_genotype(random_genotype(space, rng), space) for _ in range(40)])
    budget = Budget(table, space, CostConfig(metric="params", target=target))
    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    samples = jax.jit(jax.vmap(lambda k: sample_paths(k, space, space.cell_kinds, budget)))(keys)
    costs = np.asarray(jax.vmap(table.of_paths)(samples))
    assert (costs <= target).all() and len(np.unique(costs)) > 1
    rng = np.random.default_rng(0)
    arch = {k: np.asarray(v[0]) for k, v in samples.items()}
    for _ in range(30):
        arch = mutate_within(arch, rng, space, budget)
        assert float(table.of_paths(arch)) <= target
        paths_genotype(arch, space).validate(space, searched=True)


def test_enas_reward_is_mnasnets():
    table = CostTable("params", 0.0, {}, "nb201")
    budget = Budget(table, get_space("nb201"), CostConfig(metric="params", target=100.0))
    acc = jnp.array([0.8, 0.8])
    hinge = budget.reward(acc, jnp.array([50.0, 200.0]))
    np.testing.assert_allclose(hinge, [0.8, 0.8 * 2.0**-0.07], rtol=1e-6)
    soft = Budget(table, budget.space, CostConfig(metric="params", target=100.0, form="linear"))
    np.testing.assert_allclose(
        soft.reward(acc, jnp.array([50.0, 200.0])), 0.8 * np.array([0.5, 2.0]) ** -0.07, rtol=1e-6
    )


@pytest.mark.parametrize(
    "sets, message",
    [
        (["search.cost.metric=energy", "search.cost.target=1"], "search.cost.metric"),
        (["search.cost.metric=params", "search.cost.target=-5"], "search.cost.target"),
        (
            ["search.cost.metric=params", "search.cost.target=1", "search.cost.budget=2"],
            "search.cost.budget",
        ),
    ],
)
def test_a_bad_cost_section_is_one_line(sets, message):
    with pytest.raises(ConfigError) as e:
        load_config("darts_nb201_digits", sets)
    assert message in str(e.value) and "\n" not in str(e.value)


def _budget_search(tiny_npz, out, strategy, *cost):
    sets = [
        *TINY_NB201,
        f"data.name=npz:{tiny_npz}",
        *STRATEGIES.get(strategy, [f"search.strategy={strategy}"]),
        *cost,
    ]
    return run_search(load_config("darts_nb201_digits", sets), out)


def test_a_budget_no_cell_meets_fails_before_the_search_in_one_line(tiny_npz, tmp_path):
    with pytest.raises(ConfigError) as e:
        _budget_search(
            tiny_npz, tmp_path / "r", "gdas", "search.cost.metric=params", "search.cost.target=1000"
        )
    assert "no cell of space 'nb201' fits" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_a_latency_table_from_another_space_is_refused(tiny_npz, tmp_path):
    from nasax.search.profiling import CostProfile

    darts = static_profile(get_space("darts"), SMALL["darts"])
    CostProfile(darts.space, darts.deploy, {"latency@1": darts.table("flops")}).save(
        tmp_path / "t.json"
    )
    with pytest.raises(ConfigError) as e:
        _budget_search(
            tiny_npz,
            tmp_path / "r",
            "gdas",
            "search.cost.metric=latency",
            "search.cost.target=5",
            f"search.cost.table={tmp_path / 't.json'}",
        )
    assert "prices space 'darts'" in str(e.value) and "nasax profile" in str(e.value)


@pytest.mark.parametrize("strategy", ["gdas", "random_ws"])
def test_a_budgeted_search_finds_a_cell_within_it(strategy, tiny_npz, tmp_path):
    """At NAS-Bench-201's C16 N5, 250k parameters leave no room for a 3x3 conv."""
    summary = _budget_search(
        tiny_npz,
        tmp_path / strategy,
        strategy,
        "search.cost.metric=params",
        "search.cost.target=250000",
    )
    cost = summary["cost"]
    assert cost["within_target"] and cost["params"] <= 250_000
    assert "nor_conv_3x3" not in summary["genotype_text"]
    assert cost["latency_ms_measured"] > 0
    if strategy == "gdas":
        records = [json.loads(line) for line in (tmp_path / strategy / "metrics.jsonl").open()]
        assert any("expected_cost" in r for r in records)
        # The cost term is logged apart from the cross-entropy (`val_loss`).
        steps = [r for r in records if r["kind"] == "search"]
        for r in steps:
            objective = r["val_loss"] + r["budget_penalty"]
            assert_close(r["val_objective"], objective, terms=3, why="float32 sums of means")
        from nasax.app.report import render_report

        page = render_report(tmp_path / strategy)
        assert 'id="cost"' in page and 'id="img-cost"' in page


def test_image_classifier_budgets_the_network_final_fit_trains():
    from nasax.app.classifier import ImageClassifier

    clf = ImageClassifier(space="nb201", max_params=2e5)
    clf.image_shape, clf.num_classes = (8, 8, 1), 10
    cost = clf._config("search", "digits").search.cost
    final = clf._config("final", "digits").model
    assert (cost.metric, cost.target) == ("params", 2e5)
    assert (cost.deploy.channels, cost.deploy.layers) == (final.channels, final.layers)
    with pytest.raises(NasaxError, match="not both"):
        ImageClassifier(max_params=1e6, max_latency_ms=3.0)


def test_nasax_profile_writes_a_table_a_latency_search_keeps_to(tiny_npz, tmp_path, capsys):
    from nasax.app.cli import main

    tiny = [
        f"data.name=npz:{tiny_npz}",
        "search.cost.metric=latency",
        "search.cost.target=1000",
        "search.cost.deploy.channels=4",
        "search.cost.deploy.layers=1",
    ]
    sets = [a for s in tiny for a in ("--set", s)]
    table = tmp_path / "table.json"
    assert main(["profile", "darts_nb201_digits", *sets, "--out", str(table), "--fresh"]) == 0
    assert "profiled space 'nb201' at C4 L1 8x8" in capsys.readouterr().out
    saved = json.loads(table.read_text())
    assert saved["device"]["platform"] == jax.devices()[0].platform
    assert set(saved["tables"]) == {"params", "flops", "bytes", "latency@1"}
    latency = CostTable.from_json(saved["tables"]["latency@1"])
    space = get_space("nb201")
    cheapest, _ = latency.cheapest(space)
    rng = np.random.default_rng(0)
    cell = random_genotype(space, rng)
    while not live_edges(cell.cell("normal")[0], space):  # a cell that computes
        cell = random_genotype(space, rng)
    target = cheapest + 0.3 * (latency.of_genotype(cell, space) - cheapest)
    summary = _budget_search(
        tiny_npz,
        tmp_path / "r",
        "gdas",
        tiny[1],
        f"search.cost.target={target}",
        *tiny[3:],
        f"search.cost.table={table}",
    )
    assert summary["cost"]["latency_ms_predicted"] <= target


def test_nasax_show_gives_a_cells_cost_at_the_published_size(capsys, tmp_path):
    from nasax.app.cli import main

    assert main(["show", "DARTS_V2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"cost at C36 L20 32x32x3, 10 classes: 3\.3\d\d M parameters", out), out
    run = tmp_path / "run"
    run.mkdir()
    (run / "genotype.json").write_text(DARTS_V2.to_json())
    cost = {"metric": "params", "target": 4e6, "deploy": SMALL["darts"].to_json()}
    cost |= {"params": 1_234_567, "flops": 5e7, "latency_ms_measured": 2.5}
    (run / "summary.json").write_text(json.dumps({"cost": {**cost, "latency_batch_size": 1}}))
    assert main(["show", str(run / "genotype.json")]) == 0
    assert "cost at C8 L5 8x8: 1.235 M parameters, 50.0 MFLOPs per image, 2.50 ms" in (
        capsys.readouterr().out
    )


def test_a_tuning_studys_front_keeps_the_trials_no_other_beats(tmp_path):
    from nasax.app.tune import _add_costs, pareto_front

    points = [(3.0, 0.9), (1.0, 0.7), (2.0, 0.95), (2.5, 0.8), (1.0, 0.6)]
    assert pareto_front(points, maximize=True) == [1, 2]
    assert pareto_front([(c, -v) for c, v in points], maximize=False) == [1, 2]
    trials = []
    for i, (cost, value) in enumerate(points):
        run = tmp_path / f"trial_{i:03d}"
        run.mkdir()
        summary = {"cost": {"metric": "params", "params": cost}}
        (run / "summary.json").write_text(json.dumps(summary))
        trials.append({"state": "complete", "value": value, "run_dir": str(run)})
    _add_costs(trials, True, tmp_path)
    assert [t["pareto"] for t in trials] == [False, True, True, False, False]
    assert (tmp_path / "pareto.png").stat().st_size > 0


@pytest.mark.parametrize("form", ["hinge", "linear", "log"])
def test_the_budget_term_adds_its_gradient_to_the_losss(form, profiles):
    """with_budget's gradient is that of the whole objective (loss and cost term)."""
    from nasax.search.budget import with_budget
    from nasax.search.strategy import softmax_weights
    from nasax.supernet.network import ArchParam

    space = get_space("nb201")
    table = profiles["nb201"].table("params")
    target = 0.5 * (table.fixed + float(table.expected({"normal": jnp.full((6, 5), 0.2)}, space)))
    options = CostConfig(metric="params", target=target, form=form, weight=0.7, exponent=0.6)
    budget = Budget(table, space, options)
    alphas = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
    arch = nnx.State({"alpha_normal": ArchParam(alphas)})
    probe = jax.random.normal(jax.random.PRNGKey(1), (6, 5))

    def loss_of(a):  # a stand-in for the validation loss, through the same alphas
        return jnp.sum(jax.nn.softmax(a) * probe) ** 2 + 1.0

    def objective(a):
        cost = budget.expected({"normal": jax.nn.softmax(a)})
        return loss_of(a) + budget.penalty(cost, loss_of(a))

    loss, grad = jax.value_and_grad(loss_of)(alphas)
    grads = nnx.State({"alpha_normal": ArchParam(grad)})
    combined, metrics = with_budget(budget, arch, grads, loss, softmax_weights)
    np.testing.assert_allclose(
        nnx.to_pure_dict(combined)["alpha_normal"],
        jax.grad(objective)(alphas),
        rtol=2e-4,
        atol=1e-6,
    )
    assert float(metrics["expected_cost"]) > 0
