"""Searching recurrent cells on text: the carried hidden state, padded windows, the
second-order hypergradient, whole searches through the run loop, resume after kill -9."""

from __future__ import annotations

import json
import math
import signal
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nasax.app.cli import main
from nasax.core.errors import ConfigError
from nasax.loop.text import TextCorpus, Window, padded_length, padded_window
from nasax.search.language import LanguageSupernet, language_setup, window_input
from nasax.search.options import validate_config
from nasax.search.strategy import STRATEGIES, FunctionalSupernet, alphas_of
from nasax.search.task import run_search
from nasax.search.unrolled import unrolled_arch_grad, virtual_weight_step
from nasax.supernet.genotypes import Genotype
from nasax.supernet.rnn_network import CarriedSearchModel, Dropouts, RNNSearchModel
from nasax.supernet.spaces import get_space
from tests.conftest import kill_at_step
from tests.test_reliability import assert_same_run

WORDS = ("to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis")
NO_DROPOUT = {"output": 0.0, "hidden": 0.0, "cell_input": 0.0, "embedding": 0.0}


def write_corpus(path: Path, words: int = 500, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.write_text(" ".join(rng.choice(WORDS, words)))
    return path


def lm_config(corpus: Path, **sections) -> dict:
    """A tiny language-model search: cells of 2 nodes, 8 units, batches of 4, windows of 8
    (of one length: each padded length compiles its own step)."""
    config = {
        "data": {"name": f"text:{corpus}"},
        "model": {"space": {"base": "darts_rnn", "nodes": 2}},
        "text": {
            "embed_size": 8,
            "hidden_size": 8,
            "bptt": 8,
            "eval_batch_size": 4,
            "variable_length": False,
        },
        "search": {"strategy": "darts", "epochs": 2, "batch_size": 4},
        "optim": {
            "weights": {"lr": 2.0, "momentum": 0.0, "grad_clip": 0.25, "schedule": "constant"},
            "arch": {"lr": 3e-3, "betas": [0.9, 0.999]},
        },
        "run": {"progress": False, "tensorboard": False, "plots": False},
    }
    for key, value in sections.items():
        config.setdefault(key, {}).update(value)
    return config


def search_argv(config: dict, tmp: Path, out: Path, *extra: str) -> list[str]:
    path = tmp / "lm.yaml"
    path.write_text(json.dumps(config))
    return ["search", str(path), "--out", str(out), "--quiet", *extra]


def tiny_model(seed: int = 0, batch_size: int = 3) -> CarriedSearchModel:
    lm = RNNSearchModel(
        get_space("darts_rnn"),
        vocab_size=11,
        embed_size=6,
        hidden_size=6,
        dropouts=Dropouts(0, 0, 0, 0, 0),
        rngs=nnx.Rngs(seed),
    )
    return CarriedSearchModel(lm, batch_size=batch_size)


def window(tokens: np.ndarray, stream: int, reset: bool, length: int | None = None) -> dict:
    data = np.concatenate([tokens, tokens[:, -1:]], axis=1)  # targets do not matter here
    batch = padded_window(data, Window(0, tokens.shape[1]), length or tokens.shape[1])
    rows = tokens.shape[0]
    batch["stream"] = np.full(rows, stream, np.int32)
    batch["reset"] = np.full(rows, float(reset), np.float32)
    return window_input({k: jnp.asarray(v) for k, v in batch.items()}, None, False)


def test_a_stream_carries_its_hidden_state_from_window_to_window():
    """Two windows through the carrying supernet give the logits of one pass over both, and
    the other stream's state is untouched; `reset` starts the stream afresh."""
    model = tiny_model()
    tokens = np.random.default_rng(1).integers(0, 11, (3, 10))
    whole = model.lm(jnp.asarray(tokens)).logits
    first = model(window(tokens[:, :6], 1, True))
    second = model(window(tokens[:, 6:], 1, False))
    np.testing.assert_allclose(first, whole[:, :6], atol=1e-5)
    np.testing.assert_allclose(second, whole[:, 6:], atol=1e-5)
    np.testing.assert_array_equal(model.carry[...][0], 0.0)
    again = model(window(tokens[:, 6:], 1, True))
    np.testing.assert_allclose(again, model.lm(jnp.asarray(tokens[:, 6:])).logits, atol=1e-5)


def test_padding_changes_neither_the_logits_nor_the_carried_state():
    tokens = np.random.default_rng(2).integers(0, 11, (3, 5))
    plain, padded = tiny_model(), tiny_model()
    a = plain(window(tokens, 0, True))
    b = padded(window(tokens, 0, True, length=16))
    np.testing.assert_allclose(b[:, :5], a, atol=1e-6)
    np.testing.assert_allclose(padded.carry[...], plain.carry[...], atol=1e-6)


def test_the_masked_loss_reads_real_steps_only():
    net = LanguageSupernet(None, None)  # only the loss is used
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 5))
    labels = jnp.array([[1, 2, 3, 0], [4, 0, 1, 2]])
    valid = jnp.array([[1, 1, 0, 0], [1, 1, 0, 0]], jnp.float32)
    loss, acc = net.batch_metrics(logits, {"valid": valid}, labels)
    ref, ref_acc = FunctionalSupernet.batch_metrics(net, logits[:, :2], None, labels[:, :2])
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    np.testing.assert_allclose(acc, ref_acc)


def to64(tree):
    return jax.tree.map(
        lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
        tree,
    )


def test_the_second_order_hypergradient_of_a_tiny_rnn_matches_finite_differences(tmp_path):
    """d/dα L_val(w'(α), α) by forward over reverse equals central differences of the
    unrolled objective along random directions, in float64, dropout off."""
    corpus_path = write_corpus(tmp_path / "c.txt", 200)
    config = validate_config(
        lm_config(
            corpus_path,
            text={"embed_size": 5, "hidden_size": 5, "dropout": NO_DROPOUT},
            search={"batch_size": 3, "darts": {"order": 2}},
        )
    )
    text = corpus_path.read_text()
    vocab = tuple(dict.fromkeys(text))
    ids = np.array([vocab.index(c) for c in text], np.int32)
    corpus = TextCorpus("text:tiny", "char", vocab, ids, ids[:50], None)
    setup = language_setup(config, corpus, steps_per_epoch=4)
    net = FunctionalSupernet.create(setup)
    state = STRATEGIES.get("darts")(setup, None).init(jax.random.PRNGKey(0))
    data = ids[:60].reshape(3, 20)

    def batch(start: int, stream: int) -> dict:
        b = padded_window(data, Window(start, 6), 8)
        b["stream"] = np.full(3, stream, np.int32)
        b["reset"] = np.ones(3, np.float32)
        return {k: jnp.asarray(v) for k, v in b.items()}

    xi = 0.5
    with jax.enable_x64(True):
        state = to64(state)
        train, val = batch(0, 0), batch(8, 1)
        x_train, x_val = (window_input(b, None, True) for b in (train, val))

        def objective(arch):
            stats = state.batch_stats
            grads = jax.grad(net.loss, has_aux=True)(
                state.params, stats, arch, x_train, train["label"]
            )[0]
            unrolled = virtual_weight_step(setup, state, grads, xi)
            return net.loss(unrolled, stats, arch, x_val, val["label"])[0]

        @jax.jit
        def gradients(state):
            exact, _ = unrolled_arch_grad(
                net, setup, state, x_train, train["label"], x_val, val["label"], xi=xi
            )
            first = jax.grad(net.loss, argnums=2, has_aux=True)(
                state.params, state.batch_stats, state.arch, x_val, val["label"]
            )[0]
            return exact, first

        exact, first = gradients(state)
        g = np.asarray(alphas_of(exact)["recurrent"])
        g_first = np.asarray(alphas_of(first)["recurrent"])
        assert np.linalg.norm(g - g_first) > 1e-3 * np.linalg.norm(g)  # second order matters
        rng = np.random.default_rng(0)
        f = jax.jit(objective)
        for _ in range(3):
            d = rng.standard_normal(g.shape)
            d /= np.linalg.norm(d)

            def moved(h, d=d):
                return jax.tree.map(lambda a: a + h * d if a.shape == d.shape else a, state.arch)

            h = 1e-5
            numeric = (float(f(moved(h))) - float(f(moved(-h)))) / (2 * h)
            np.testing.assert_allclose(float(np.sum(g * d)), numeric, rtol=1e-5, atol=1e-9)


SAMPLED = {"select_batches": 2, "candidates": 4}
"""The sampling strategies' tiny options."""


@pytest.mark.parametrize(
    "strategy, space, options",
    [
        ("darts", "darts_rnn", None),
        ("beta_darts", "darts_rnn", None),
        ("random_ws", "darts_rnn", SAMPLED),
        ("enas", "enas_rnn", {**SAMPLED, "controller_steps": 2}),
    ],
)
def test_a_search_on_text_finds_a_recurrent_cell(strategy, space, options, tmp_path):
    """Each required strategy, and β-DARTS; ENAS in its own space, which has no `none` op."""
    corpus = write_corpus(tmp_path / "c.txt")
    sections = {
        "search": {"strategy": strategy, "epochs": 1},
        "model": {"space": {"base": space, "nodes": 2}},
    }
    if options:
        sections["search"][strategy] = options
    config = validate_config(lm_config(corpus, **sections))
    summary = run_search(config, tmp_path / "run")
    genotype = Genotype.load(tmp_path / "run" / "genotype.json")
    nodes, _ = genotype.cell("recurrent")
    assert len(nodes) == 2 and all(len(node) == 1 for node in nodes)
    assert all(node[0][1] <= i for i, node in enumerate(nodes))  # node i reads state 0..i
    assert math.isfinite(summary["test_loss"])
    assert summary["test_bpc"] == pytest.approx(summary["test_loss"] / math.log(2))
    assert summary["test_ppl"] == pytest.approx(math.exp(summary["test_loss"]))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert records[-1]["test_bpc"] == pytest.approx(summary["test_bpc"])
    if strategy in ("darts", "beta_darts"):
        with np.load(tmp_path / "run" / "alphas.npz") as alphas:
            assert alphas["alpha_recurrent"].shape == (1, 3, 5)
    if strategy == "beta_darts":  # the regulariser, logged apart from the cross-entropy
        search = [r for r in records if r["kind"] == "search"]
        assert search and all(r["beta_reg"] >= 0 for r in search)
        assert all(
            r["val_objective"] == pytest.approx(r["val_loss"] + r["beta_reg"]) for r in search
        )


def test_recurrent_searches_refuse_what_they_cannot_do(tmp_path):
    corpus = write_corpus(tmp_path / "c.txt")
    for sections, expected in (
        ({"search": {"strategy": "pcdarts"}}, "'pcdarts' does not search recurrent cells"),
        ({"search": {"cost": {"metric": "params", "target": 1e6}}}, "search.cost: budgets"),
        ({"model": {"space": "darts"}}, "is text; language models take model.space"),
    ):
        with pytest.raises(ConfigError) as info:
            run_search(validate_config(lm_config(corpus, **sections)), tmp_path / "run")
        assert expected in str(info.value) and "\n" not in str(info.value)


def test_kill_9_mid_bptt_resumes_bit_exact(tmp_path):
    """SIGKILL in the middle of an epoch's windows (variable lengths, hidden states carried),
    checkpointing after every step: the resumed search ends as an uninterrupted one."""
    corpus = write_corpus(tmp_path / "c.txt", 300)
    config = lm_config(corpus, text={"variable_length": True}, run={"checkpoint_minutes": 1e-9})
    reference = tmp_path / "reference"
    assert main(search_argv(config, tmp_path, reference)) == 0
    steps = json.loads((reference / "summary.json").read_text())["steps"]
    kill_at = steps // 2 + 2  # inside the second epoch
    out = tmp_path / "killed"
    cmd = kill_at_step(
        tmp_path, "nasax.search.language", kill_at, [*search_argv(config, tmp_path, out)]
    )
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert main(search_argv(config, tmp_path, out, "--resume")) == 0
    assert_same_run(reference, out)


def test_windows_pad_to_bptt_plus_a_multiple_of_the_bucket():
    """A window of the mean length is not padded; others round up by steps of 8 from it."""
    assert [padded_length(n, anchor=35) for n in (35, 36, 43, 28, 27, 1)] == [35, 43, 43, 35, 27, 3]
    assert [padded_length(n) for n in (1, 8, 9)] == [8, 8, 16]
