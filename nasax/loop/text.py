"""Text corpora for language models: a character-level file (`text:PATH`), a word-level
folder laid out as Penn Treebank ships (`text-words:DIR`), token batches as the DARTS and
AWD-LSTM code lays them out, and the variable-length BPTT windows they train on."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypedDict

import jax
import jax.numpy as jnp
import numpy as np

from nasax.core.errors import DataError

UNK, EOS = "<unk>", "<eos>"
"""Penn Treebank's unknown-word token, and the end-of-line token added to each line."""

WORD_FILES = ("train.txt", "valid.txt", "test.txt")
"""The files of a `text-words:` folder, one per split."""


@dataclass(frozen=True)
class TextCorpus:
    """A tokenised corpus held in host memory.

    Attributes:
        name: the data name it was loaded from (`text:PATH`, `text-words:DIR`).
        level: "char" (a token is a character) or "word" (whitespace-separated words,
            with `<eos>` closing every line).
        vocab: the token of each id, in order of first appearance in the training split
            (so a word folder gets the DARTS reference's ids).
        train, valid: int32 token ids of the training and validation splits.
        test: int32 token ids of the test split; None where the source has none (a
            `text:` file split with `test_fraction=0`).
    """

    name: str
    level: Literal["char", "word"]
    vocab: tuple[str, ...]
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray | None

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def signature(self) -> list[object]:
        """What compiled programs depend on in the corpus (the run loop's program key)."""
        return [self.level, self.vocab_size]

    @cached_property
    def ids(self) -> dict[str, int]:
        """Token -> id."""
        return {token: i for i, token in enumerate(self.vocab)}

    def encode(self, text: str) -> np.ndarray:
        """The ids of `text` split as the corpus is (characters, or words of one line
        without `<eos>`); unknown words become `<unk>` where the vocabulary has it."""
        tokens = list(text) if self.level == "char" else text.split()
        return token_ids(tokens, self.ids, f"{self.name}: the text to encode")

    def decode(self, ids: Iterable[int]) -> str:
        """The text of token ids: characters joined, or words joined by spaces."""
        return ("" if self.level == "char" else " ").join(self.vocab[int(i)] for i in ids)


def token_ids(tokens: Sequence[str], ids: dict[str, int], where: str) -> np.ndarray:
    """int32 ids of `tokens`; a token outside the vocabulary becomes `<unk>` if the
    vocabulary has it, else a DataError naming `where` and the token."""
    unk = ids.get(UNK)
    out = np.empty(len(tokens), np.int32)
    for i, token in enumerate(tokens):
        found = ids.get(token, unk)
        if found is None:
            raise DataError(
                f"{where} has the token {token!r}, which the training split does not, and the "
                f"vocabulary has no {UNK} to map it to; add it to the training split or "
                f"replace rare tokens by {UNK} there"
            )
        out[i] = found
    return out


def _read(path: Path, what: str) -> str:
    """The UTF-8 text of a file, or a one-line DataError."""
    if not path.is_file():
        raise DataError(f"{what} {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {str(path)!r} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise DataError(f"cannot read {what} {str(path)!r}: {e.strerror}") from None
    if not text:
        raise DataError(f"{what} {str(path)!r} is empty")
    return text


def _vocabulary(tokens: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(tokens))


def load_text(
    path: str | Path, *, valid_fraction: float = 0.1, test_fraction: float = 0.0
) -> TextCorpus:
    """A character-level corpus of one UTF-8 file (`text:PATH`), split in file order.

    The first characters train, the next `valid_fraction` validate and the last
    `test_fraction` test (default: none, so `test` is None: a test split must be asked
    for). The vocabulary is the training part's characters; a character only the other
    parts hold is an error (characters have no `<unk>`).
    """
    path = Path(path).expanduser()
    name = f"text:{path}"
    if valid_fraction <= 0 or test_fraction < 0 or valid_fraction + test_fraction >= 1:
        raise DataError(
            f"{name}: valid_fraction ({valid_fraction}) must be above 0, test_fraction "
            f"({test_fraction}) at least 0, and together below 1"
        )
    text = _read(path, "text file")
    n = len(text)
    valid_start = int(n * (1 - valid_fraction - test_fraction))
    test_start = int(n * (1 - test_fraction))
    parts = {"train": text[:valid_start], "valid": text[valid_start:test_start]}
    if test_fraction > 0:
        parts["test"] = text[test_start:]
    short = [split for split, part in parts.items() if not part]
    if short:
        raise DataError(
            f"{name} has {n} characters, too few for a non-empty {' and '.join(short)} split"
        )
    vocab = _vocabulary(parts["train"])
    ids = {token: i for i, token in enumerate(vocab)}
    where = {"valid": "the validation part", "test": "the test part"}
    arrays = {
        split: token_ids(part, ids, f"{name}: {where.get(split, split)}")
        for split, part in parts.items()
    }
    return TextCorpus(name, "char", vocab, arrays["train"], arrays["valid"], arrays.get("test"))


def line_tokens(text: str) -> list[str]:
    """A word file's tokens: each line's words, then `<eos>` (the DARTS reference's
    tokenizer, so a Penn Treebank copy gets its token counts). Lines end at newlines
    only, as Python's file iteration splits them (`read_text` made every line end `\\n`)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [token for line in lines for token in (*line.split(), EOS)]


def load_text_words(folder: str | Path) -> TextCorpus:
    """A word-level corpus from a folder of `train.txt`, `valid.txt` and `test.txt`, as
    Penn Treebank ships (`text-words:DIR`): words split on whitespace, `<eos>` closing
    each line, the vocabulary from `train.txt`; other splits' unknown words become
    `<unk>` if `train.txt` has it, else are an error.
    """
    folder = Path(folder).expanduser()
    name = f"text-words:{folder}"
    if not folder.is_dir():
        raise DataError(
            f"text folder {str(folder)!r} does not exist; a text-words folder holds "
            f"{', '.join(WORD_FILES)}"
        )
    missing = [f for f in WORD_FILES if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{name}: no {' or '.join(missing)}; a text-words folder holds "
            f"{', '.join(WORD_FILES)} as Penn Treebank ships them"
        )
    texts = {f: _read(folder / f, "word file") for f in WORD_FILES}
    wordless = [f for f, text in texts.items() if not text.split()]
    if wordless:
        raise DataError(f"{name}: {' and '.join(wordless)} has no words")
    tokens = {f: line_tokens(text) for f, text in texts.items()}
    vocab = _vocabulary(tokens["train.txt"])
    ids = {token: i for i, token in enumerate(vocab)}
    train, valid, test = (token_ids(tokens[f], ids, f"{name}: {f}") for f in WORD_FILES)
    return TextCorpus(name, "word", vocab, train, valid, test)


def load_corpus(
    name: str, *, valid_fraction: float = 0.1, test_fraction: float = 0.0
) -> TextCorpus:
    """A corpus by its data name: `text:PATH` (characters; the fractions split it) or
    `text-words:DIR` (words; its files are the splits)."""
    prefix, _, arg = name.partition(":")
    if prefix not in ("text", "text-words") or not arg:
        raise DataError(
            f"data.name {name!r} is not a text corpus; use text:PATH (one UTF-8 file, "
            "characters) or text-words:DIR (train.txt, valid.txt, test.txt, words)"
        )
    if prefix == "text":
        return load_text(arg, valid_fraction=valid_fraction, test_fraction=test_fraction)
    return load_text_words(arg)


# ------------------------------------------------------------------ batches and windows


def batchify(tokens: np.ndarray, batch_size: int) -> np.ndarray:
    """(batch_size, steps) token ids: row b is the b-th of `batch_size` equal contiguous
    pieces of the stream, and the remainder is dropped (the reference's `batchify`,
    batch-major: its columns are these rows)."""
    steps = len(tokens) // batch_size
    if batch_size < 1 or steps < 2:
        raise DataError(
            f"{len(tokens)} tokens make no batch of {batch_size} rows of at least 2 tokens "
            "(an input and its target); lower the batch size"
        )
    return np.asarray(tokens[: steps * batch_size], np.int32).reshape(batch_size, steps)


MAX_EXTRA = 20
"""How far beyond `bptt` a drawn training window may reach (AWD-LSTM's cap)."""


def window_capacity(bptt: int, variable: bool = True) -> int:
    """The length every training window is padded to: the longest a draw around `bptt`
    can be (or `bptt` itself for fixed windows). One compiled step then serves every
    window, and the cell skips the padded steps (`scan_cell`)."""
    return bptt + MAX_EXTRA if variable else bptt


class Window(NamedTuple):
    """A BPTT window over a (batch, steps) array: inputs at [start, start + length),
    targets one step later."""

    start: int
    length: int


def bptt_windows(
    n_steps: int,
    bptt: int,
    rng: np.random.Generator | None = None,
    *,
    max_extra: int = MAX_EXTRA,
    min_length: int = 5,
) -> list[Window]:
    """The windows one pass over `n_steps` columns takes, in order.

    With `rng` (training), each length is drawn as AWD-LSTM and DARTS do: around `bptt`
    (around `bptt / 2` with probability 0.05), plus normal noise of deviation 5, cut to
    [min_length, bptt + max_extra]. Without it (evaluation), every window is `bptt` long.
    A window never reads past the last target: the last one is shortened.

    Args:
        n_steps: columns of the batched data (`batchify(...).shape[1]`).
        bptt: the mean window length (35 for Penn Treebank).
        rng: the draws of the lengths, e.g. ``np.random.default_rng([seed, epoch])``,
            so a resumed epoch gets the same windows.
        max_extra: how far beyond `bptt` a drawn length may go.
        min_length: the shortest drawn length.
    """
    if bptt < 1:
        raise ValueError(f"bptt must be at least 1, got {bptt}")
    windows = []
    if rng is None:
        for start in range(0, n_steps - 1, bptt):
            windows.append(Window(start, min(bptt, n_steps - 1 - start)))
        return windows
    start = 0
    while start < n_steps - 2:
        mean = bptt if rng.random() < 0.95 else bptt / 2
        length = min(max(min_length, int(rng.normal(mean, 5))), bptt + max_extra)
        windows.append(Window(start, min(length, n_steps - 1 - start)))
        start += length
    return windows


def window_batch(data: np.ndarray, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of a window: (batch, length) each, targets one step later."""
    start, length = window
    return data[:, start : start + length], data[:, start + 1 : start + 1 + length]


LENGTH_BUCKET = 8
"""Training windows are padded to a multiple of this many steps, so variable-length BPTT
compiles a handful of programs (one per padded length) instead of one per length."""


def padded_length(length: int, bucket: int = LENGTH_BUCKET, anchor: int = 0) -> int:
    """The padded length of a window of `length` steps: the shortest `anchor` plus a
    multiple (maybe negative) of `bucket` that holds it. With `anchor` the mean BPTT
    length, windows of exactly that length are not padded at all."""
    shortest = anchor - (anchor - 1) // bucket * bucket  # the smallest such length >= 1
    return max(shortest, anchor + -(-(length - anchor) // bucket) * bucket)


def padded_window(
    data: np.ndarray, window: Window, length: int | None = None, *, anchor: int = 0
) -> dict[str, np.ndarray]:
    """A window as a batch: `tokens` and `label` (its targets), (batch, length) each, and
    `valid`, 1.0 at real steps and 0.0 at the padding that fills the window up to `length`
    (default: `padded_length` of its own, around `anchor`)."""
    tokens, targets = window_batch(data, window)
    rows, real = tokens.shape
    length = padded_length(real, anchor=anchor) if length is None else length
    if length < real:
        raise ValueError(f"a window of {real} steps does not fit a padded length of {length}")
    pad = ((0, 0), (0, length - real))
    valid = np.zeros((rows, length), np.float32)
    valid[:, :real] = 1.0
    return {
        "tokens": np.pad(tokens, pad),
        "label": np.pad(targets, pad),
        "valid": valid,
    }


# ------------------------------------------------------------------ evaluation


class Figures(TypedDict):
    """A language model's figures on a split: nats per token, next-token accuracy,
    perplexity, and bits per character (char-level corpora; else None)."""

    loss: float
    accuracy: float
    ppl: float
    bpc: float | None


def figures(loss: float, accuracy: float, level: str) -> Figures:
    """A split's figures from its loss in nats per token and its accuracy."""
    ppl = math.exp(loss) if loss < 700 else math.inf
    return {
        "loss": loss,
        "accuracy": accuracy,
        "ppl": ppl,
        "bpc": loss / math.log(2) if level == "char" else None,
    }


def evaluate_stream(
    eval_fn: Callable[..., tuple[dict[str, jax.Array], jax.Array]],
    params: Any,
    data: np.ndarray,
    bptt: int,
    hidden_size: int,
    level: str,
    put: Callable[[Any], Any] = jax.device_put,
) -> Figures:
    """The figures of `params` over a batchified stream, walked in order with `bptt`-long
    windows carrying the hidden state from zeros, as the reference evaluates; the last,
    shorter window is padded, so one program serves them all."""
    hidden = put(jnp.zeros((data.shape[0], hidden_size), jnp.float32))
    sums = []
    for window in bptt_windows(data.shape[1], bptt):
        window_sums, hidden = eval_fn(params, hidden, put(padded_window(data, window, bptt)))
        sums.append(window_sums)
    host = jax.device_get(sums)  # one transfer; added in float64
    total = {k: sum(float(s[k]) for s in host) for k in ("loss_sum", "correct", "count")}
    return figures(total["loss_sum"] / total["count"], total["correct"] / total["count"], level)


__all__ = [
    "EOS",
    "LENGTH_BUCKET",
    "MAX_EXTRA",
    "UNK",
    "Figures",
    "TextCorpus",
    "Window",
    "batchify",
    "bptt_windows",
    "evaluate_stream",
    "figures",
    "line_tokens",
    "load_corpus",
    "load_text",
    "load_text_words",
    "padded_length",
    "padded_window",
    "token_ids",
    "window_batch",
    "window_capacity",
]
