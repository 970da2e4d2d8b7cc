"""Text from a retrained language model (`nasax generate`): the prompt is fed through in one
pass, then the tokens are sampled one after another in a single `lax.scan`, so a whole
generation is one compiled program (one per padded prompt length and output length)."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nasax.core.errors import ConfigError, DataError
from nasax.loop.text import padded_length
from nasax.supernet.rnn_network import RNNModel
from nasax.train.evaluate import reading_run
from nasax.train.export import load_model, read_manifest
from nasax.train.language import load_language_run
from nasax.train.lm_trainer import Vocabulary


def next_token(logits: jax.Array, key: jax.Array, temperature: jax.Array) -> jax.Array:
    """A token drawn from softmax(logits / temperature); the most likely at temperature 0."""
    sampled = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6))
    return jnp.where(temperature > 0, sampled, jnp.argmax(logits)).astype(jnp.int32)


@partial(jax.jit, static_argnames=("graphdef", "length"))
def _sample(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prompt: jax.Array,
    prompt_length: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    *,
    length: int,
) -> jax.Array:
    """`length` tokens after `prompt` (padded; its first `prompt_length` are real)."""
    real = (jnp.arange(prompt.shape[0]) < prompt_length).astype(jnp.float32)
    out = nnx.merge(graphdef, params)(prompt[None], valid=real[None])
    logits = out.logits[0, prompt_length - 1]

    def step(carry: tuple[jax.Array, jax.Array], key: jax.Array) -> tuple[tuple, jax.Array]:
        logits, hidden = carry
        token = next_token(logits, key, temperature)
        out = nnx.merge(graphdef, params)(token[None, None], hidden)
        return (out.logits[0, 0], out.hidden), token

    _, tokens = jax.lax.scan(step, (logits, out.hidden), jax.random.split(key, length))
    return tokens


def generate_ids(
    model: RNNModel,
    prompt: np.ndarray,
    length: int,
    *,
    temperature: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """The ids of `length` tokens that follow `prompt` (int ids, at least one).

    Args:
        model: a language model (`RNNModel`), evaluated without dropout.
        prompt: the token ids to start from.
        length: how many tokens to generate.
        temperature: softmax temperature of the draws; 0 takes the most likely token.
        seed: the draws' key.
    """
    prompt = np.asarray(prompt, np.int32)
    if prompt.ndim != 1 or len(prompt) == 0:
        raise DataError("the prompt is empty; give at least one token to start from")
    if length < 1:
        raise ConfigError(f"--length must be at least 1, got {length}")
    if temperature < 0:
        raise ConfigError(f"--temperature must be 0 (greedy) or above, got {temperature}")
    graphdef, params = nnx.split(model, nnx.Param)
    padded = np.zeros(padded_length(len(prompt)), np.int32)
    padded[: len(prompt)] = prompt
    tokens = _sample(
        graphdef,
        params,
        jnp.asarray(padded),
        jnp.asarray(len(prompt), jnp.int32),
        jax.random.PRNGKey(seed),
        jnp.asarray(temperature, jnp.float32),
        length=length,
    )
    return np.asarray(jax.device_get(tokens))


class Generated(NamedTuple):
    """A generation: the prompt as the vocabulary reads it, the text that follows, and
    the vocabulary's level ("char" or "word")."""

    prompt: str
    text: str
    level: str

    @property
    def joined(self) -> str:
        """Prompt and continuation as one text (words: separated by a space)."""
        if self.level == "char" or not self.text:
            return self.prompt + self.text
        return self.prompt + ("" if self.text.startswith("\n") else " ") + self.text


def load_language_model(path: str | os.PathLike) -> tuple[RNNModel, Vocabulary]:
    """The model and vocabulary of a language-model retraining run (its latest state, with
    NT-ASGD's average once on) or of the folder `nasax export` wrote of one."""
    path = Path(path)
    if (path / "model.json").is_file():
        read_manifest(path)
        return load_model(path), Vocabulary.load(path / "vocab.json")
    with reading_run(path):
        files = load_language_run(path)
    return files.module(), files.vocab


def generate_text(
    path: str | os.PathLike,
    prompt: str,
    length: int,
    *,
    temperature: float = 1.0,
    seed: int = 0,
) -> Generated:
    """`length` tokens of text after `prompt`, from a language-model run directory or an
    exported language model (`generate_ids` for the arguments)."""
    model, vocab = load_language_model(path)
    ids = vocab.encode(prompt)
    out = generate_ids(model, ids, length, temperature=temperature, seed=seed)
    return Generated(vocab.decode(ids), vocab.decode(out), vocab.level)


__all__ = ["Generated", "generate_ids", "generate_text", "load_language_model", "next_token"]
