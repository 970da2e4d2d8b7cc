"""Text corpora for the language models: character files, Penn-Treebank-style word folders,
their one-line errors, batchify and the BPTT windows. All text is generated here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nasax.core.errors import DataError
from nasax.loop.data import load_dataset
from nasax.loop.text import (
    EOS,
    UNK,
    Window,
    batchify,
    bptt_windows,
    load_corpus,
    load_text,
    load_text_words,
    window_batch,
)


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def sentences(n: int, seed: int, words: list[str]) -> str:
    rng = np.random.default_rng(seed)
    return "".join(" " + " ".join(rng.choice(words, 6)) + " \n" for _ in range(n))


WORDS = ["the", "cat", "sat", "on", "a", "mat", UNK, "N"]


def word_folder(root: Path, valid: str | None = None, train_words: list[str] = WORDS) -> Path:
    """train/valid/test.txt as Penn Treebank has them: a space before each line's words."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text(sentences(40, 0, train_words), encoding="utf-8")
    (root / "valid.txt").write_text(valid or sentences(5, 1, WORDS[:6]), encoding="utf-8")
    (root / "test.txt").write_text(sentences(5, 2, WORDS[:6]), encoding="utf-8")
    return root


def test_a_character_file_splits_in_order_with_the_training_vocabulary(tmp_path):
    text = "".join(sentences(30, 3, ["abc", "de", "fgh", "ij"]))
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    corpus = load_corpus(f"text:{tmp_path / 't.txt'}")
    assert corpus.level == "char" and corpus.test is None
    assert len(corpus.train) == int(0.9 * len(text))
    assert corpus.decode(corpus.train) + corpus.decode(corpus.valid) == text
    assert set(corpus.vocab) == set(text[: len(corpus.train)]) and corpus.vocab[0] == " "
    assert corpus.train.dtype == np.int32 and corpus.vocab_size == len(set(text))
    split = load_text(tmp_path / "t.txt", valid_fraction=0.2, test_fraction=0.1)
    n = len(text)
    assert (len(split.train), len(split.valid)) == (int(0.7 * n), int(0.9 * n) - int(0.7 * n))
    assert split.decode(split.train) + split.decode(split.valid) + split.decode(split.test) == text
    np.testing.assert_array_equal(split.encode("abc"), [split.ids[c] for c in "abc"])


def test_a_character_only_the_validation_part_holds_is_an_error(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("ab" * 45 + "abababababz", encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_text(path)
    assert "the validation part has the token 'z'" in one_line(info)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"caf\xe9", "is not UTF-8 text (byte 3)"),
        (b"a", "too few for a non-empty train split"),
    ],
)
def test_a_bad_text_file_gets_one_line(tmp_path, content, fragment):
    path = tmp_path / "t.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_corpus(f"text:{path}")
    assert fragment in one_line(info)


def test_a_word_folder_reads_as_penn_treebank(tmp_path):
    root = word_folder(tmp_path / "ptb", valid=" the dog sat \n a cat \n")
    corpus = load_corpus(f"text-words:{root}")
    train_text = (root / "train.txt").read_text()
    lines = train_text.splitlines()
    # the DARTS reference's ids: words in order of first appearance, <eos> after each line
    expected = list(dict.fromkeys(w for line in lines for w in [*line.split(), EOS]))
    assert corpus.level == "word" and list(corpus.vocab) == expected
    assert len(corpus.train) == sum(len(line.split()) + 1 for line in lines)
    assert corpus.decode(corpus.valid) == f"the {UNK} sat {EOS} a cat {EOS}"  # dog unknown
    assert corpus.test is not None and corpus.test[-1] == corpus.ids[EOS]
    assert corpus.decode(corpus.train[:7]) == " ".join([*lines[0].split(), EOS])


def test_a_word_without_unk_to_map_it_to_is_an_error(tmp_path):
    root = word_folder(tmp_path / "w", valid=" the dog \n", train_words=WORDS[:6])
    with pytest.raises(DataError) as info:
        load_text_words(root)
    message = one_line(info)
    assert "valid.txt has the token 'dog'" in message and f"no {UNK}" in message


def test_a_bad_word_folder_gets_one_line(tmp_path):
    with pytest.raises(DataError) as info:
        load_corpus(f"text-words:{tmp_path / 'none'}")
    assert "does not exist; a text-words folder holds train.txt" in one_line(info)
    root = word_folder(tmp_path / "w")
    (root / "test.txt").unlink()
    with pytest.raises(DataError) as info:
        load_text_words(root)
    assert "no test.txt" in one_line(info)
    word_folder(root)
    (root / "valid.txt").write_text("")
    with pytest.raises(DataError) as info:
        load_text_words(root)
    assert "valid.txt' is empty" in one_line(info)
    (root / "valid.txt").write_text(" \n\n")
    with pytest.raises(DataError, match=r"valid\.txt has no words"):
        load_text_words(root)


def test_text_names_are_not_image_data_sets(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset(f"text:{tmp_path}/t.txt")
    assert "is a text corpus for language models" in one_line(info)
    with pytest.raises(DataError) as info:
        load_corpus(f"npz:{tmp_path}/t.npz")
    assert "not a text corpus; use text:PATH" in one_line(info)


def test_batchify_lays_the_stream_out_in_rows():
    """Row b is the b-th contiguous piece; the reference's columns, batch-major."""
    data = batchify(np.arange(23), 4)
    np.testing.assert_array_equal(data, np.arange(20).reshape(4, 5))
    assert data.dtype == np.int32
    with pytest.raises(DataError, match="make no batch of 4 rows"):
        batchify(np.arange(7), 4)


def test_evaluation_windows_tile_the_columns():
    windows = bptt_windows(12, 5)
    assert windows == [Window(0, 5), Window(5, 5), Window(10, 1)]
    data = batchify(np.arange(24), 2)
    inputs, targets = window_batch(data, windows[-1])
    np.testing.assert_array_equal(inputs, [[10], [22]])
    np.testing.assert_array_equal(targets, [[11], [23]])


def test_training_windows_vary_around_bptt_and_replay_from_their_generator():
    n, bptt = 50_000, 35
    windows = bptt_windows(n, bptt, np.random.default_rng([7, 0]))
    assert windows == bptt_windows(n, bptt, np.random.default_rng([7, 0]))
    assert windows != bptt_windows(n, bptt, np.random.default_rng([7, 1]))
    lengths = np.array([w.length for w in windows])
    assert lengths[:-1].min() >= 5 and lengths.max() <= bptt + 20
    assert len(set(lengths.tolist())) > 10
    # AWD-LSTM's draw: bptt 95% of the time, bptt/2 otherwise, normal noise of sd 5,
    # truncated to an int (half a token shorter on average); 3 standard errors
    mean = 0.95 * bptt + 0.05 * bptt / 2 - 0.5
    assert abs(lengths[:-1].mean() - mean) < 3 * 6.3 / np.sqrt(len(lengths))
    assert (lengths < bptt / 2 + 10).mean() > 0.02  # the short windows exist
    starts = np.array([w.start for w in windows])
    np.testing.assert_array_equal(starts[1:], starts[:-1] + lengths[:-1])
    assert starts[-1] + lengths[-1] <= n - 1  # the last target exists
    data = batchify(np.arange(3 * n), 3)
    inputs, targets = window_batch(data, windows[3])
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
    assert inputs.shape == (3, windows[3].length)
