"""Macro skeletons by name: how the cells of a space are stacked into networks.

A search space names its skeleton (`SearchSpace.skeleton`); the skeleton gives the
search network (mixed edges) and the discrete network a genotype is retrained as,
so the search and training loops build any space's networks without knowing it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from flax import nnx

from nasax.core.config import Config, ModelConfig
from nasax.core.errors import ConfigError
from nasax.core.registry import Registry
from nasax.supernet.discrete import DiscreteNetwork
from nasax.supernet.nb201 import NB201Network, NB201SearchNetwork
from nasax.supernet.network import GenotypeNetwork, SearchNetwork, Supernet
from nasax.supernet.ops import OPS
from nasax.supernet.rnn_network import RNNModel, RNNSearchModel
from nasax.supernet.rnn_ops import RNN_OPS
from nasax.supernet.spaces import SPACES, SearchSpace, get_space, space_name


class Skeleton(NamedTuple):
    """A macro skeleton.

    Attributes:
        search_network: ``(space, *, channels, layers, num_classes, in_channels,
            stem_multiplier, edge, edge_normalization, rngs)`` -> a module
            with `SearchNetwork`'s interface.
        discrete_network: ``(genotype, *, num_classes, channels, layers, in_channels,
            stem_multiplier, auxiliary, rngs)`` -> a module with `DiscreteNetwork`'s
            interface.
        stem_multiplier: the only stem multiplier it builds (None: any).
        auxiliary: its discrete network can have an auxiliary head.
        ops: the registry of the ops its edges hold (a genotype may use any of them).
        data: what its networks read: "images" (the image search and training tasks
            build them) or "text" (language models: the rnn skeleton, whose networks
            take ``(space | genotype, *, vocab_size, embed_size, hidden_size, dropouts,
            rngs)``, see `nasax.supernet.rnn_network`).
    """

    search_network: Callable[..., nnx.Module]
    discrete_network: Callable[..., nnx.Module]
    stem_multiplier: int | None = None
    auxiliary: bool = True
    ops: Registry[Any] = OPS
    data: str = "images"

    @classmethod
    def of(
        cls, search_network: type[Supernet], discrete_network: type[GenotypeNetwork]
    ) -> Skeleton:
        """The skeleton of two network classes built on one stacking class, with the stem
        multiplier and auxiliary head those classes themselves allow."""
        return cls(
            search_network,
            discrete_network,
            search_network.fixed_stem_multiplier,
            discrete_network.auxiliary_head,
        )


SKELETONS: Registry[Skeleton] = Registry(
    "macro skeleton", dict.fromkeys(("darts", "nb201", "rnn"), "nasax.supernet.skeletons")
)
SKELETONS.register("darts", Skeleton.of(SearchNetwork, DiscreteNetwork))
SKELETONS.register("nb201", Skeleton.of(NB201SearchNetwork, NB201Network))
SKELETONS.register(
    "rnn", Skeleton(RNNSearchModel, RNNModel, auxiliary=False, ops=RNN_OPS, data="text")
)


def skeleton_of(space: SearchSpace | str) -> Skeleton:
    """The skeleton that builds networks of `space` (a SearchSpace or a registered name)."""
    space = get_space(space) if isinstance(space, str) else space
    return SKELETONS.get(space.skeleton)


TEXT_SOURCES = ("text:", "text-words:")
"""The data name prefixes of text corpora (`nasax.loop.text.load_corpus`)."""


def data_kind(data_name: str) -> str:
    """What a data name holds: "text" (`text:`, `text-words:`) or "images"."""
    return "text" if data_name.startswith(TEXT_SOURCES) else "images"


def resolve_model(model: ModelConfig, data_name: str = "digits") -> ModelConfig:
    """The `model` section with its space as a name (a mapping defines one), once the
    space is known, its skeleton reads the kind of data `data_name` names and accepts
    the section; ValueError naming the key."""
    name = space_name(model.space)
    try:
        space = get_space(name)
    except KeyError as e:  # an unknown space (a definition that does not fit its base
        raise ValueError(f"model.space: {e.args[0]}") from None  # raises ValueError itself)
    reads, given = skeleton_of(space).data, data_kind(data_name)
    if reads != given:
        fitting = [n for n in SPACES.names() if skeleton_of(n).data == given]
        if reads == "text":
            raise ValueError(
                f"model.space: space {space.name!r} builds language models (the "
                f"{space.skeleton} skeleton reads text), but data.name {data_name!r} holds "
                f"images; image search and training take {', '.join(fitting)}, and language "
                "models data.name text:PATH or text-words:DIR"
            )
        raise ValueError(
            f"model.space: space {space.name!r} builds image networks, but data.name "
            f"{data_name!r} is text; language models take model.space {' or '.join(fitting)}"
        )
    fixed = skeleton_of(space).stem_multiplier
    if fixed is not None and model.stem_multiplier != fixed:
        raise ValueError(
            f"model.stem_multiplier is {model.stem_multiplier}, but the {space.skeleton} "
            f"skeleton of space {space.name!r} builds only {fixed}; set "
            f"model.stem_multiplier={fixed}"
        )
    return model.model_copy(update={"space": name})


def resolve_model_config(config: Config, source: str = "config") -> Config:
    """`config` with its `model` section resolved (`resolve_model`); a one-line
    ConfigError if the section does not fit its space."""
    try:
        return config.model_copy(update={"model": resolve_model(config.model, config.data.name)})
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None


__all__ = [
    "SKELETONS",
    "TEXT_SOURCES",
    "Skeleton",
    "data_kind",
    "resolve_model",
    "resolve_model_config",
    "skeleton_of",
]
