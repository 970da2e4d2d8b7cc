"""Retraining a recurrent genotype as a language model (AWD-LSTM's protocol, as the DARTS
reference's rnn/train.py runs it); `run` does the rest.

The train split is laid out as `batch_size` parallel streams; each step trains on one BPTT
window of them and carries the last hidden state to the next window. The loss is the
next-token cross-entropy over the window's real steps plus activation (AR) and temporal
activation (TAR) regularisation. SGD runs at `optim.weights.lr` scaled by the window's
length over `text.bptt`; once the validation loss stops improving (non-monotonically, by
`text.nonmono` evaluations), the run keeps the running average of the weights after every
step (NT-ASGD), and evaluation and the final model use that average.

A run directory holds what an image retraining holds (config.yaml, genotype.json,
checkpoints/, metrics.jsonl, summary.json) and `vocab.json`, the tokens of the training
split, so `nasax generate` and `nasax export` rebuild the model without the corpus.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypedDict, Unpack, cast

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from nasax.core.config import Config, validate_config
from nasax.core.errors import ConfigError, DataError, GenotypeError, RunDirError
from nasax.loop.data import Batch
from nasax.loop.run import RunContext, RunOptions, RunSummary, Task, TaskRun, run
from nasax.loop.runloop import guard_step, is_eval_epoch, prefetch
from nasax.loop.text import (
    Figures,
    TextCorpus,
    Window,
    batchify,
    evaluate_stream,
    load_corpus,
    padded_window,
    window_capacity,
)
from nasax.supernet.genotypes import Genotype, load_genotype
from nasax.supernet.rnn_cells import recurrent_space
from nasax.supernet.rnn_network import RNNModel
from nasax.supernet.skeletons import data_kind, skeleton_of
from nasax.supernet.spaces import SPACES, get_space, space_name
from nasax.train.evaluate import reading_run, restore_latest, run_progress
from nasax.train.lm_trainer import (
    Averaging,
    LanguageTrainer,
    LMState,
    Metrics,
    Vocabulary,
    WindowPlan,
    build_language_trainer,
    check_same_vocabulary,
    eval_params,
    nonmono_switch,
)
from nasax.train.task import resolve_genotype

# ------------------------------------------------------------------ the task


def is_text_space(space: str | dict[str, Any]) -> bool:
    """Whether `model.space` names a space whose skeleton builds language models."""
    try:
        return skeleton_of(get_space(space)).data == "text"
    except (KeyError, ValueError):
        return False


def trains_language(config: Config, genotype: Genotype | str | None) -> bool:
    """Whether `nasax train` retrains a language model: the config reads text (`model.space`
    a recurrent space, or `data.name` a text corpus), or the genotype (given, or
    `train.genotype`) is a recurrent cell. The language task then refuses what does not
    fit (an image cell on text, a recurrent cell on images) in one line."""
    if is_text_space(config.model.space) or data_kind(config.data.name) == "text":
        return True
    genotype = genotype if genotype is not None else config.train.genotype
    if isinstance(genotype, str):
        genotype = load_genotype(genotype)
    return genotype is not None and skeleton_of(genotype.resolve_space()).data == "text"


def _text_spaces() -> list[str]:
    return [n for n in SPACES.names() if skeleton_of(n).data == "text"]


def resolve_language_config(config: Config, source: str = "config") -> Config:
    """`config` with its `model.space` checked to be a recurrent space (and named); a
    one-line ConfigError otherwise."""
    try:
        name = space_name(config.model.space)
        space = get_space(name)
    except KeyError as e:
        raise ConfigError(f"{source}: model.space: {e.args[0]}") from None
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    if skeleton_of(space).data != "text":
        data = "" if data_kind(config.data.name) == "text" else " and data.name to text:PATH"
        raise ConfigError(
            f"{source}: model.space is {space.name!r}, whose {space.skeleton} skeleton builds "
            f"image networks; a language model retrains a recurrent cell: set model.space to "
            f"{' or '.join(_text_spaces())}{data}"
        )
    t = config.text
    if t.tie_weights and t.embed_size != t.hidden_size:
        raise ConfigError(
            f"{source}: text.tie_weights decodes with the embedding matrix, so text.embed_size "
            f"({t.embed_size}) must equal text.hidden_size ({t.hidden_size}); make them equal "
            "or set text.tie_weights=false"
        )
    return config.model_copy(update={"model": config.model.model_copy(update={"space": name})})


def _resolve_genotype(
    config: Config, genotype: Genotype | str | None, run_dir: Path, resume: bool
) -> Genotype:
    """The recurrent genotype to train: given, named in the config, or (resuming) the
    run's own; GenotypeError for an image cell or one of another recurrent space."""
    genotype = resolve_genotype(config, genotype, run_dir, resume, example="DARTS_RNN_V2")
    if resume:
        return genotype
    try:
        space = recurrent_space(genotype)
    except GenotypeError as e:
        raise GenotypeError(
            f"model.space {config.model.space!r} retrains a language model: {e}"
        ) from None
    if space.name != config.model.space:
        raise GenotypeError(
            f"genotype is for space {space.name!r}, but model.space is {config.model.space!r}; "
            f"set model.space={space.name}"
        )
    return genotype


def _stream_steps(tokens: np.ndarray, batch_size: int, key: str, split: str) -> int:
    """Columns of a split batchified into `batch_size` rows; a one-line DataError naming
    `key` when it makes no window."""
    steps = len(tokens) // batch_size if batch_size > 0 else 0
    if steps < 2:
        raise DataError(
            f"the {split} split has {len(tokens)} tokens, too few for {batch_size} streams of "
            f"at least 2 tokens (an input and its target); lower {key} or use more text"
        )
    return steps


class LanguageFields(TypedDict):
    """A language-model retraining's own fields of summary.json."""

    params: int
    genotype: dict[str, Any]
    level: str
    vocab_size: int
    train_tokens: int
    test_split: str
    """"test", or "valid" where the corpus has no test split (the test figures are then
    the validation split's)."""
    test_ppl: float
    test_bpc: float | None
    val_loss: float
    val_acc: float
    val_ppl: float
    val_bpc: float | None
    averaged: bool
    """Whether NT-ASGD switched to averaging (the final weights are the average)."""
    averaged_steps: int


class LanguageSummary(RunSummary, LanguageFields):
    """summary.json of a language-model retraining (`images_per_sec`: windows' rows/s)."""


class LanguagePlan(NamedTuple):
    """A language retraining's sizes, windows and the genotype it trains (None until the
    run directory says, on resume)."""

    epochs: int
    batch_size: int
    steps_per_epoch: int
    eval_every: int
    windows: WindowPlan
    vocab: Vocabulary
    genotype: Genotype | None


class LanguageModelRun(NamedTuple):
    """What a language retraining made besides its state: the cell, the vocabulary, the
    trainer, and the epochs it completed."""

    genotype: Genotype
    vocab: Vocabulary
    trainer: LanguageTrainer
    epoch: int


class LanguageTask(Task):
    """A recurrent genotype retrained from scratch as a language model on `text:` or
    `text-words:` data, tested on the test split (the validation split where there is none).

    `genotype` is a Genotype, a genotype.json path, a search run directory or a published
    name (DARTS_RNN_V2); default `train.genotype` (or, resuming, the run's own).
    """

    kind = "train"
    step_name = "training step"
    shown = ("train_loss", "train_acc", "lr")
    resume_ignore = ("train.genotype",)

    def __init__(self, genotype: Genotype | str | None = None) -> None:
        self.genotype = genotype

    def resolve(self, config: Config) -> Config:
        return resolve_language_config(config)

    def label(self, config: Config) -> str:
        return "train lm"

    def load_data(self, config: Config) -> TextCorpus:  # type: ignore[override]
        t = config.text
        return load_corpus(
            config.data.name, valid_fraction=t.valid_fraction, test_fraction=t.test_fraction
        )

    def prepare(  # type: ignore[override]
        self, config: Config, corpus: TextCorpus, workdir: Path, resume: bool
    ) -> LanguagePlan:
        if not isinstance(corpus, TextCorpus):
            raise DataError(
                f"data {getattr(corpus, 'name', corpus)!r} is not text; a language model "
                "trains on data.name text:PATH or text-words:DIR"
            )
        t, text = config.train, config.text
        genotype = None
        if not resume:
            genotype = _resolve_genotype(config, self.genotype, workdir, resume=False)
        n_steps = _stream_steps(corpus.train, t.batch_size, "train.batch_size", "training")
        _stream_steps(corpus.valid, text.eval_batch_size, "text.eval_batch_size", "validation")
        if corpus.test is not None:
            _stream_steps(corpus.test, text.eval_batch_size, "text.eval_batch_size", "test")
        windows = WindowPlan.of(n_steps, text.bptt, t.epochs, config.seed, text.variable_length)
        vocab = Vocabulary.of(corpus)
        steps = windows.steps
        return LanguagePlan(t.epochs, t.batch_size, steps, t.eval_every, windows, vocab, genotype)

    def open(self, config: Config, run_dir: Path, resume: bool, plan: LanguagePlan) -> LanguagePlan:
        """Writes genotype.json and vocab.json, or (resuming) reads the genotype back and
        checks the corpus still has the run's vocabulary."""
        if resume:
            check_same_vocabulary(Vocabulary.load(run_dir / "vocab.json"), plan.vocab, run_dir)
            genotype = _resolve_genotype(config, self.genotype, run_dir, resume=True)
            return plan._replace(genotype=genotype)
        assert plan.genotype is not None
        plan.genotype.save(run_dir / "genotype.json")
        plan.vocab.save(run_dir / "vocab.json")
        return plan

    def build(self, ctx: RunContext, plan: LanguagePlan) -> LanguageRun:  # type: ignore[override]
        return LanguageRun(self, ctx, plan)


class LanguageRun(TaskRun):
    """One language-model retraining: its streams, trainer, programs and NT-ASGD switch."""

    plan: LanguagePlan

    def __init__(self, task: LanguageTask, ctx: RunContext, plan: LanguagePlan) -> None:
        super().__init__(task, ctx, plan)
        assert plan.genotype is not None
        corpus = cast(TextCorpus, ctx.dataset)
        self.corpus, self.genotype, self.vocab = corpus, plan.genotype, plan.vocab
        config = self.config
        self.trainer = build_language_trainer(
            config, self.genotype, corpus.vocab_size, plan.steps_per_epoch
        )
        eval_rows = config.text.eval_batch_size
        self.streams = {
            "train": batchify(corpus.train, plan.batch_size),
            "valid": batchify(corpus.valid, eval_rows),
            "test": batchify(corpus.test if corpus.test is not None else corpus.valid, eval_rows),
        }
        self.test_split = "test" if corpus.test is not None else "valid"
        self.params = 0
        self.eval_fn: Callable | None = None  # set with the step (`compile`)
        self._figures: dict[tuple[str, int], Figures] = {}  # the latest evaluations
        self.after_epoch = self._after_epoch

    def init(self, key: jax.Array) -> LMState:
        return self.trainer.init(key)

    def start(self, state: LMState, start: tuple[int, int]) -> None:
        self.params = int(sum(np.size(x) for x in jax.tree.leaves(state.params)))

    def describe(self) -> str:
        c, text = self.corpus, self.config.text
        lengths = "variable" if text.variable_length else "fixed"
        return (
            f"{c.name}: {len(c.train):,} training {c.level}s, vocabulary {c.vocab_size:,}; "
            f"{self.steps_per_epoch} windows per epoch ({lengths}, bptt {text.bptt}) of "
            f"{self.batch_size} streams; {self.params:,} parameters"
        )

    def compile(self, state: LMState) -> Callable[..., tuple[LMState, Metrics]]:
        """The step (one program per padded window length, compiled here for the usual
        one) and the evaluation; a later run given the same program cache reuses them."""
        step, self.eval_fn = self.cached_programs(
            partial(self._build_programs, state),
            genotype=self.genotype.to_json(),
            steps=self.steps_per_epoch,
        )
        return step

    def _build_programs(self, state: LMState, key: str) -> tuple[Any, Any]:
        jitted = jax.jit(guard_step(self.trainer.step, self.config.run), donate_argnums=0)

        def step(state: LMState, batch: Batch) -> tuple[LMState, Metrics]:
            """The jitted step without the validation history, which it does not read, so
            the program does not depend on the run's epochs."""
            new, metrics = jitted(state._replace(val_losses=None), batch)
            return new._replace(val_losses=state.val_losses), metrics

        usual = Window(0, min(self.config.text.bptt, self.plan.windows.n_steps - 1))
        length = window_capacity(self.config.text.bptt, self.config.text.variable_length)
        sample = self.ctx.dp.put_batch(padded_window(self.streams["train"], usual, length))
        jax.block_until_ready(step(jax.tree.map(jnp.copy, state), sample))  # compiles
        return step, jax.jit(self.trainer.evaluate)

    def epoch_batches(self, epoch: int, first: int) -> Iterator[tuple[Batch]]:
        data = self.streams["train"]
        windows = self.plan.windows.windows(epoch)[first:]
        # every window padded to the longest a draw can be: one program, padding skipped
        length = window_capacity(self.config.text.bptt, self.config.text.variable_length)
        stream = prefetch(
            (padded_window(data, w, length) for w in windows), put=self.ctx.dp.put_batch
        )
        return ((batch,) for batch in stream)

    def figures(self, split: str, state: LMState) -> Figures:
        """The figures of `state`'s evaluation weights on `split` ("valid" or "test"),
        computed once per step."""
        key = (split, int(jax.device_get(state.step)))
        if key not in self._figures:
            assert self.eval_fn is not None
            found = evaluate_stream(
                self.eval_fn,
                eval_params(state),
                self.streams[split],
                self.config.text.bptt,
                self.config.text.hidden_size,
                self.corpus.level,
                put=self.ctx.dp.put_state,
            )
            while len(self._figures) >= 4:
                self._figures.pop(next(iter(self._figures)))
            self._figures[key] = found
        return self._figures[key]

    def _after_epoch(
        self, state: LMState, epoch: int, step: int
    ) -> tuple[LMState, list[dict[str, Any]]]:
        """The validation loss, NT-ASGD's switch, and a fresh hidden state for the next
        epoch (the reference starts each epoch from zeros)."""
        val = self.figures("valid", state)
        record: dict[str, Any] = {"kind": "eval", "epoch": epoch + 1, "step": step}
        record.update(_prefixed("val", val))
        if is_eval_epoch(epoch, self.epochs, self.eval_every):
            record.update(_prefixed("test", self.figures("test", state)))
        history = np.array(jax.device_get(state.val_losses), np.float32)
        loss = np.float32(val["loss"])  # as the history keeps it, so a resume decides alike
        averaging = bool(jax.device_get(state.averaging.on))
        nonmono = self.config.text.nonmono
        switch = not averaging and nonmono_switch(history[:epoch].tolist(), float(loss), nonmono)
        history[epoch] = loss
        state = state._replace(
            hidden=jnp.zeros_like(state.hidden),
            val_losses=jnp.asarray(history),
            averaging=Averaging.start(state.params) if switch else state.averaging,
        )
        record["averaging"] = averaging or switch
        if switch:
            record["asgd_switch"] = True
            best = float(min(history[: epoch - nonmono]))
            self.ctx.progress.log(
                f"epoch {epoch + 1}: validation loss {float(loss):.4f} is worse than {best:.4f}, "
                f"the best before the last {nonmono} epochs; NT-ASGD: averaging the weights "
                f"from step {step + 1}"
            )
        return self.ctx.dp.put_state(state), [record]

    def test(self, state: LMState) -> dict[str, float]:
        return cast(dict[str, float], dict(self.figures("test", state)))

    def test_line(self, test: dict[str, float]) -> str:
        bpc = test.get("bpc")
        return f", loss {test['loss']:.4f}, ppl {test['ppl']:.2f}" + (
            f", bpc {bpc:.4f}" if bpc is not None else ""
        )

    def summary(self, state: LMState) -> LanguageFields:
        test, val = self.figures("test", state), self.figures("valid", state)
        return {
            "params": self.params,
            "genotype": self.genotype.to_dict(),
            "level": self.corpus.level,
            "vocab_size": self.corpus.vocab_size,
            "train_tokens": len(self.corpus.train),
            "test_split": self.test_split,
            "test_ppl": test["ppl"],
            "test_bpc": test["bpc"],
            "val_loss": val["loss"],
            "val_acc": val["accuracy"],
            "val_ppl": val["ppl"],
            "val_bpc": val["bpc"],
            "averaged": bool(jax.device_get(state.averaging.on)),
            "averaged_steps": int(jax.device_get(state.averaging.count)),
        }

    def made(self, state: LMState) -> LanguageModelRun:
        epoch = int(jax.device_get(state.step)) // self.steps_per_epoch
        return LanguageModelRun(self.genotype, self.vocab, self.trainer, epoch)


def _prefixed(prefix: str, found: Figures) -> dict[str, Any]:
    names = {"loss": "loss", "accuracy": "acc", "ppl": "ppl", "bpc": "bpc"}
    return {f"{prefix}_{names[k]}": v for k, v in found.items() if v is not None}


def run_language(
    config: Config,
    run_dir: str | Path,
    *,
    genotype: Genotype | str | None = None,
    **options: Unpack[RunOptions],
) -> LanguageSummary:
    """Retrains a recurrent genotype as a language model as `config` says; returns the
    summary.

    Args:
        config: the validated config (its `train`, `text`, `model`, `data`, `optim`
            sections; `model.space` a recurrent space).
        run_dir: where config.yaml, genotype.json, vocab.json, metrics.jsonl,
            checkpoints/ and summary.json go.
        genotype: a Genotype, a genotype.json path, a search run directory, or a
            published name (DARTS_RNN_V2); default `train.genotype` (or, resuming, the
            run's own).
        options: `nasax.loop.run.run`'s (resume, overwrite, on_epoch, programs, data).
    """
    result = run(LanguageTask(genotype), config, run_dir, **options)
    return cast(LanguageSummary, result.summary)


# ------------------------------------------------------------------ a run read back


def is_language_run(run_dir: str | Path) -> bool:
    """Whether `run_dir` is a language-model retraining (it has a vocab.json)."""
    return (Path(run_dir) / "vocab.json").is_file()


class LanguageRunFiles(NamedTuple):
    """A language retraining read back: its config, cell, vocabulary, trainer, latest
    state and that checkpoint's position (`epoch`, `batch`, `step`)."""

    config: Config
    genotype: Genotype
    vocab: Vocabulary
    trainer: LanguageTrainer
    state: LMState
    meta: dict[str, Any]

    def module(self) -> RNNModel:
        """The model with the weights the run evaluates with (NT-ASGD's average once on)."""
        return self.trainer.module(eval_params(self.state))


def load_language_run(run_dir: str | Path) -> LanguageRunFiles:
    """The config, genotype, vocabulary, trainer and latest checkpointed state of a
    language retraining, without its corpus."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    needed = ("config.yaml", "genotype.json", "vocab.json")
    missing = [name for name in needed if not (run_dir / name).is_file()]
    if missing:
        raise RunDirError(
            f"{run_dir} is not a language-model run directory (it lacks {', '.join(missing)} "
            "that nasax train writes for text data)"
        )
    config_path = run_dir / "config.yaml"
    config = validate_config(yaml.safe_load(config_path.read_text()), str(config_path))
    config = resolve_language_config(config, str(config_path))
    genotype = Genotype.load(run_dir / "genotype.json")
    vocab = Vocabulary.load(run_dir / "vocab.json")
    trainer = build_language_trainer(config, genotype, len(vocab), 1)
    if not (run_dir / "checkpoints").is_dir():
        raise RunDirError(f"{run_dir} has no checkpoints/ yet")
    state, meta = restore_latest(run_dir, config, trainer.init(jax.random.PRNGKey(config.seed)))
    state = jax.device_put(state)  # restored as host arrays; a traced program indexes them
    return LanguageRunFiles(config, genotype, vocab, trainer, state, meta)


def evaluate_language_run(run_dir: str | Path) -> dict[str, Any]:
    """Test figures of the latest checkpoint of a language retraining (`nasax evaluate`);
    it reads the corpus the run trained on."""
    with reading_run(run_dir):
        files = load_language_run(run_dir)
    config = files.config
    corpus = LanguageTask().load_data(config)
    check_same_vocabulary(files.vocab, Vocabulary.of(corpus), Path(run_dir))
    split = "test" if corpus.test is not None else "valid"
    data = batchify(
        corpus.test if corpus.test is not None else corpus.valid, config.text.eval_batch_size
    )
    found = evaluate_stream(
        jax.jit(files.trainer.evaluate),
        eval_params(files.state),
        data,
        config.text.bptt,
        config.text.hidden_size,
        corpus.level,
    )
    meta = files.meta
    return {
        **run_progress(run_dir, config, meta),
        "split": split,
        "tokens": int(data.shape[0] * (data.shape[1] - 1)),
        **{f"test_{k}": v for k, v in found.items()},
    }


__all__ = [
    "LanguageModelRun",
    "LanguagePlan",
    "LanguageRun",
    "LanguageRunFiles",
    "LanguageSummary",
    "LanguageTask",
    "evaluate_language_run",
    "is_language_run",
    "is_text_space",
    "load_language_run",
    "resolve_language_config",
    "run_language",
    "trains_language",
]
