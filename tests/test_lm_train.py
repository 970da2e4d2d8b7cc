"""Retraining a recurrent genotype as a language model: the masked loss, NT-ASGD, a run end
to end and its resume after kill -9, generation, export, and the one-line errors."""

from __future__ import annotations

import itertools
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
from nasax.core.checkpoint import Checkpoints
from nasax.core.config import load_config
from nasax.loop.text import Window, batchify, bptt_windows, load_text, padded_window
from nasax.supernet import DARTS_RNN_V2, RNNModel
from nasax.train import language
from nasax.train.generate import generate_ids, load_language_model
from nasax.train.language import load_language_run, resolve_language_config
from nasax.train.lm_trainer import (
    Averaging,
    Vocabulary,
    WindowPlan,
    build_language_trainer,
    nonmono_switch,
    split_longest,
    window_loss,
)
from tests.conftest import kill_at_step
from tests.test_reliability import assert_same_run, metrics_without_timing
from tests.tolerance import assert_close

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "big", "red", "sun"]

TINY_LM = [
    "text.embed_size=16",
    "text.hidden_size=16",
    "train.batch_size=8",
    "train.epochs=3",
    "text.bptt=12",
    "text.eval_batch_size=2",
    "text.test_fraction=0.1",
    "run.log_every=4",
    "run.progress=false",
]
"""Overrides that make retrain_rnn_shakespeare a seconds-long run on `corpus_text`."""


def corpus_text(seed: int = 0, lines: int = 120) -> str:
    """A few thousand characters of sentences from a small vocabulary."""
    rng = np.random.default_rng(seed)
    return "\n".join(" ".join(rng.choice(WORDS, 8)) + "." for _ in range(lines))


def lm_args(corpus: Path | str, out: Path, *extra: str, genotype: str = "DARTS_RNN_V2") -> list:
    """`nasax train` arguments of the tiny language-model retraining into `out`."""
    sets = [*TINY_LM, f"data.name=text:{corpus}"]
    command = ["train", "retrain_rnn_shakespeare", "--genotype", genotype]
    return [*command, *[a for s in sets for a in ("--set", s)], "--out", str(out), *extra]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(corpus_text())
    return path


@pytest.fixture(scope="module")
def trained_lm(corpus, tmp_path_factory) -> Path:
    """One uninterrupted tiny retraining, the reference of the resumed one (not changed)."""
    out = tmp_path_factory.mktemp("runs") / "lm"
    assert main(lm_args(corpus, out)) == 0
    return out


def tiny_model(vocab: int = 21) -> RNNModel:
    """A 16-wide DARTS V2 language model with the retraining's dropouts."""
    return RNNModel(DARTS_RNN_V2, vocab_size=vocab, embed_size=16, hidden_size=16, rngs=nnx.Rngs(0))


def one_line_error(capsys, argv: list[str], fragment: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("nasax: ") and fragment in err, err
    return err


# ------------------------------------------------------------------ the loss


def test_padding_changes_neither_the_loss_nor_its_gradient_nor_the_carried_state():
    """A 13-step window padded to 16 gives the loss, gradient and last hidden state of the
    same window unpadded, with every dropout, AR and TAR on."""
    data = batchify(np.random.default_rng(0).integers(0, 21, 400).astype(np.int32), 4)
    model = tiny_model()
    hidden = jax.random.normal(jax.random.PRNGKey(1), (4, 16))
    rng = jax.random.PRNGKey(2)
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params, batch):
        parts, last = window_loss(
            nnx.merge(graphdef, params), batch, hidden, rng, activation_reg=2.0, temporal_reg=1.0
        )
        return parts.total, (parts, last)

    window = Window(3, 13)
    padded = padded_window(data, window)
    assert padded["tokens"].shape == (4, 16) and padded["valid"][:, 13:].sum() == 0
    exact = padded_window(data, window, length=13)
    grad = jax.jit(jax.grad(loss, has_aux=True))
    (g_pad, (p_pad, h_pad)), (g_exact, (p_exact, h_exact)) = (
        grad(params, b) for b in (padded, exact)
    )
    for field in p_pad._fields:
        sums = 4 * 16 * 13  # the AR sum is the longest
        assert_close(getattr(p_pad, field), getattr(p_exact, field), terms=sums, why=field)
    np.testing.assert_array_equal(h_pad, h_exact)
    for a, b in zip(jax.tree.leaves(g_pad), jax.tree.leaves(g_exact)):
        assert_close(a, b, terms=4 * 16 * 13, why="gradient", magnitude=np.abs(b).max() + 1e-3)
    # padding counts nowhere: garbage at the padded steps changes nothing
    noisy = {**padded, "tokens": padded["tokens"].copy(), "label": padded["label"].copy()}
    noisy["tokens"][:, 13:] = 7
    noisy["label"][:, 13:] = 9
    (_, (p_noisy, h_noisy)) = grad(params, noisy)
    np.testing.assert_array_equal(p_noisy.total, p_pad.total)
    np.testing.assert_array_equal(h_noisy, h_pad)


def test_every_epoch_takes_its_windows_in_as_many_steps():
    """Variable-length windows tile the stream in order; an epoch that draws fewer than
    the most of any epoch gets its longest ones halved."""
    plan = WindowPlan.of(500, 12, epochs=5, seed=0, variable=True)
    counts = set()
    for epoch in range(5):
        windows = plan.windows(epoch)
        assert len(windows) == plan.steps
        drawn = bptt_windows(500, 12, np.random.default_rng([0, epoch]))
        assert windows[0].start == 0 and windows[-1].start + windows[-1].length == sum(drawn[-1])
        assert all(a.start + a.length == b.start for a, b in itertools.pairwise(windows))
        assert plan.windows(epoch) == windows  # the same windows again (a resume)
        counts.add(len(drawn))
    assert max(counts) == plan.steps
    split = split_longest([Window(0, 10), Window(10, 4), Window(14, 10)], 5)
    assert split == [Window(0, 5), Window(5, 5), Window(10, 4), Window(14, 5), Window(19, 5)]


# ------------------------------------------------------------------ NT-ASGD


def test_the_nonmonotone_trigger_follows_awd_lstm():
    """With nonmono 2: switch once the loss is worse than the best of all but the last two
    earlier ones (and there are more than two)."""
    losses = [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 2.0]
    fired = [i for i in range(len(losses)) if nonmono_switch(losses[:i], losses[i], 2)]
    # i=3: 3.5 > min([5]) no; i=4: 3.2 > min([5, 4]) no; i=5: 3.1 > min([5, 4, 3]) yes
    assert fired[0] == 5
    assert not any(nonmono_switch([5, 4, 3, 2], 1.0, k) for k in (1, 2, 3))
    assert not nonmono_switch([1.0, 2.0], 9.0, 2)  # not more than nonmono yet


def test_the_average_is_the_mean_of_the_iterates_after_the_switch(corpus):
    config = resolve_language_config(
        load_config("retrain_rnn_shakespeare", [*TINY_LM, f"data.name=text:{corpus}"])
    )
    trainer = build_language_trainer(config, DARTS_RNN_V2, 21, 10)
    data = batchify(load_text(corpus).train, 8)
    step = jax.jit(trainer.step)
    state = trainer.init(jax.random.PRNGKey(0))
    batch = padded_window(data, Window(0, 12))
    state, _ = step(state, batch)
    assert int(state.averaging.count) == 0  # off: nothing averaged
    np.testing.assert_array_equal(state.averaging.params["embedding"][...], 0.0)
    state = state._replace(averaging=Averaging.start(state.params))
    iterates = []
    for i in range(1, 6):
        state, _ = step(state, padded_window(data, Window(12 * i, 12)))
        iterates.append(jax.device_get(state.params))
    assert int(state.averaging.count) == 5
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.averaging.params):
        stacked = [jax.tree_util.tree_leaves_with_path(p) for p in iterates]
        values = [dict(s)[path] for s in stacked]
        mean = np.mean(np.stack(values), 0)
        assert_close(leaf, mean, terms=5, why=str(path), magnitude=np.abs(values).max(0))


def test_the_switch_fires_at_the_epoch_the_rule_names_and_averages_from_there(
    corpus, tmp_path, monkeypatch
):
    """Validation losses made by hand: with nonmono 2 the run switches after epoch 6
    (index 5), logs it once, and averages the weights of the last epoch's steps."""
    losses = [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 3.0]
    real = language.LanguageRun.figures

    def scripted(self, split, state):
        found = real(self, split, state)
        epoch = int(state.step) // self.steps_per_epoch - 1
        return {**found, "loss": losses[epoch]} if split == "valid" else found

    monkeypatch.setattr(language.LanguageRun, "figures", scripted)
    out = tmp_path / "asgd"
    argv = lm_args(corpus, out, "--set", "train.epochs=7", "--set", "text.nonmono=2")
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["val_loss"] for r in evals] == losses
    assert [r["epoch"] for r in evals if r.get("asgd_switch")] == [6]
    assert [r["averaging"] for r in evals] == [False] * 5 + [True] * 2
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"] // 7
    assert summary["averaged"] and summary["averaged_steps"] == steps
    files = load_language_run(out)
    assert int(files.state.averaging.count) == steps
    # the final model is the average
    module_params = nnx.state(files.module(), nnx.Param)
    leaves = zip(jax.tree.leaves(module_params), jax.tree.leaves(files.state.averaging.params))
    for a, b in leaves:
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ a run


def test_a_run_ends_with_finite_perplexity_and_bits_per_character(trained_lm, capsys):
    summary = json.loads((trained_lm / "summary.json").read_text())
    assert summary["level"] == "char" and summary["test_split"] == "test"
    loss = summary["test_loss"]
    assert math.isfinite(loss) and 0 < loss < math.log(summary["vocab_size"]) + 1
    assert summary["test_ppl"] == pytest.approx(math.exp(loss), rel=1e-12)
    assert summary["test_bpc"] == pytest.approx(loss / math.log(2), rel=1e-12)
    assert summary["val_bpc"] == pytest.approx(summary["val_loss"] / math.log(2), rel=1e-12)
    assert summary["params"] == sum(
        x.size for x in jax.tree.leaves(nnx.state(tiny_model(summary["vocab_size"]), nnx.Param))
    )
    records = [json.loads(line) for line in (trained_lm / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2, 3]
    assert all({"val_ppl", "val_bpc", "test_ppl", "test_bpc"} <= r.keys() for r in evals)
    assert evals[-1]["test_loss"] == loss
    # `train_loss` is the cross-entropy; TAR (weight 1e-3; AR is off) is logged apart.
    steps = [r for r in records if r["kind"] == "train"]
    assert steps and not any("ar_reg" in r for r in steps)
    for r in steps:
        assert r["tar_reg"] > 0
        why = "a float32 sum, as means of the same steps"
        assert_close(r["train_objective"], r["train_loss"] + r["tar_reg"], terms=3, why=why)
    vocab = Vocabulary.load(trained_lm / "vocab.json")
    assert vocab.level == "char" and "".join(sorted(vocab.tokens)) == "".join(
        sorted(set(corpus_text()[: int(len(corpus_text()) * 0.8)]))
    )
    assert main(["evaluate", str(trained_lm)]) == 0  # the latest checkpoint, evaluated again
    printed = capsys.readouterr().out
    assert "finished after 3 of 3 epochs" in printed
    assert f"test perplexity {summary['test_ppl']:.2f}, {summary['test_bpc']:.4f} bits" in printed


def test_kill_9_mid_epoch_resumes_to_the_uninterrupted_run(trained_lm, corpus, tmp_path):
    """SIGKILL in the middle of the second epoch, checkpointing after every step: the
    resumed run (hidden state, windows, dropout keys, NT-ASGD state) ends bit-equal to the
    uninterrupted one, metrics included."""
    steps = json.loads((trained_lm / "summary.json").read_text())["steps"] // 3
    kill_at = steps + steps // 2
    out = tmp_path / "killed"
    every_step = ["--set", "run.checkpoint_minutes=1e-9", "--quiet"]
    cmd = kill_at_step(
        tmp_path, "nasax.train.language", kill_at, [*lm_args(corpus, out, *every_step)]
    )
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert Checkpoints(out / "checkpoints").latest_step() == kill_at - 1
    assert main(lm_args(corpus, out, *every_step, "--resume")) == 0
    assert_same_run(trained_lm, out)
    a, b = (json.loads((r / "summary.json").read_text()) for r in (trained_lm, out))
    assert (a["test_loss"], a["val_loss"]) == (b["test_loss"], b["val_loss"])
    assert metrics_without_timing(out)[-1]["kind"] == "epoch"


# ------------------------------------------------------------------ generation and export


def test_greedy_generation_is_deterministic_and_equals_single_steps(trained_lm, capsys):
    model, vocab = load_language_model(trained_lm)
    prompt = vocab.encode("the cat ")
    first = generate_ids(model, prompt, 30, temperature=0.0)
    np.testing.assert_array_equal(first, generate_ids(model, prompt, 30, temperature=0.0))
    hidden, logits, expected = None, None, []
    for token in prompt:  # the prompt one token at a time, then argmax after argmax
        out = model(jnp.asarray([[token]]), hidden)
        hidden, logits = out.hidden, out.logits[0, 0]
    for _ in range(30):
        expected.append(int(jnp.argmax(logits)))
        out = model(jnp.asarray([[expected[-1]]]), hidden)
        hidden, logits = out.hidden, out.logits[0, 0]
    assert first.tolist() == expected
    sampled = generate_ids(model, prompt, 30, temperature=1.0, seed=3)
    np.testing.assert_array_equal(sampled, generate_ids(model, prompt, 30, temperature=1.0, seed=3))
    argv = ["generate", str(trained_lm), "--prompt", "the cat ", "--length", "30"]
    assert main([*argv, "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "the cat " + vocab.decode(first) + "\n"


def test_the_export_round_trips_to_the_models_logits(trained_lm, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["export", str(trained_lm), "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["kind"] == "language_model" and manifest["hidden_size"] == 16
    assert Vocabulary.load(out / "vocab.json") == Vocabulary.load(trained_lm / "vocab.json")
    exported = jax.export.deserialize(bytearray((out / "inference.jax").read_bytes()))
    model = load_language_run(trained_lm).module()
    rng = np.random.default_rng(0)
    for batch, time in ((3, 7), (1, 1), (2, 20)):  # symbolic batch and time
        tokens = jnp.asarray(rng.integers(0, manifest["vocab_size"], (batch, time)), jnp.int32)
        hidden = jnp.asarray(rng.normal(size=(batch, 16)), jnp.float32)
        logits, last = exported.call(tokens, hidden)
        want = model(tokens, hidden)
        assert logits.shape == (batch, time, manifest["vocab_size"])
        assert_close(logits, want.logits, terms=32 * time, why="logits")
        assert_close(last, want.hidden, terms=32 * time, why="hidden")
    loaded = nasax_load_model(out)
    tokens = jnp.asarray([[1, 2, 3]], jnp.int32)
    np.testing.assert_array_equal(loaded(tokens).logits, model(tokens).logits)
    # generate reads the exported folder as it reads the run
    argv = ["generate", "--prompt", "the", "--length", "12", "--temperature", "0"]
    capsys.readouterr()
    printed = []
    for source in (out, trained_lm):
        assert main([argv[0], str(source), *argv[1:]]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] and len(printed[0]) == len("the") + 12 + 1
    text = tmp_path / "text.txt"  # or to a file, as printed
    assert main([argv[0], str(out), *argv[1:], "--out", str(text)]) == 0
    assert text.read_text() + "\n" == printed[0]


def nasax_load_model(path: Path):
    import nasax

    return nasax.load_model(path)


# ------------------------------------------------------------------ one-line errors


def test_an_empty_text_file_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one_line_error(capsys, lm_args(empty, tmp_path / "out"), "is empty")


def test_a_character_only_the_held_out_part_has_is_one_line(tmp_path, capsys):
    path = tmp_path / "odd.txt"
    path.write_text(corpus_text() + "\nZZZZZZZZ")
    one_line_error(capsys, lm_args(path, tmp_path / "out"), "'Z'")


def test_resuming_on_a_corpus_of_another_vocabulary_is_one_line(corpus, tmp_path, capsys):
    path = tmp_path / "corpus.txt"
    path.write_text(corpus.read_text())
    out = tmp_path / "run"
    assert main(lm_args(path, out, "--quiet")) == 0
    path.write_text(corpus_text().replace("t", "T"))  # T for t, all through
    argv = lm_args(path, out, "--quiet", "--resume")
    one_line_error(capsys, argv, "vocabulary differs")


def test_an_image_cell_on_text_is_one_line(corpus, tmp_path, capsys):
    argv = lm_args(corpus, tmp_path / "out", genotype="DARTS_V2")
    err = one_line_error(capsys, argv, "genotype is for space 'darts'")
    assert "DARTS_RNN_V2" in err


def test_a_recurrent_cell_on_an_image_config_is_one_line(tmp_path, capsys):
    argv = ["train", "retrain_digits", "--genotype", "DARTS_RNN_V2", "--out", str(tmp_path)]
    one_line_error(capsys, argv, "set model.space to darts_rnn")


def test_a_batch_larger_than_the_corpus_is_one_line(corpus, tmp_path, capsys):
    argv = lm_args(corpus, tmp_path / "out", "--set", "train.batch_size=5000")
    one_line_error(capsys, argv, "lower train.batch_size")
    argv = lm_args(corpus, tmp_path / "out", "--set", "text.eval_batch_size=5000")
    one_line_error(capsys, argv, "lower text.eval_batch_size")


def test_a_prompt_outside_the_vocabulary_is_one_line(trained_lm, capsys):
    argv = ["generate", str(trained_lm), "--prompt", "the cat!", "--length", "5"]
    one_line_error(capsys, argv, "the character '!'")


# ------------------------------------------------------------------ the shipped configs


def test_the_ptb_config_is_the_darts_papers_protocol():
    c = resolve_language_config(load_config("retrain_rnn_ptb"))
    t, w = c.text, c.optim.weights
    assert c.model.space == "darts_rnn" and c.data.name.startswith("text-words:")
    assert (t.embed_size, t.hidden_size, c.train.batch_size, t.bptt) == (850, 850, 64, 35)
    assert (w.lr, w.weight_decay, w.grad_clip, w.momentum, w.schedule) == (
        20.0,
        8e-7,
        0.25,
        0.0,
        "constant",
    )
    d = t.dropout
    assert (d.output, d.hidden, d.cell_input, d.embedding, d.words) == (0.75, 0.25, 0.75, 0.2, 0.1)
    assert (t.activation_reg, t.temporal_reg, t.nonmono, t.variable_length) == (0, 1e-3, 5, True)
    shakespeare = resolve_language_config(load_config("retrain_rnn_shakespeare"))
    assert shakespeare.data.name.startswith("text:")
