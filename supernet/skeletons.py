"""Macro skeletons by name: how the cells of a space are stacked into networks.

A search space names its skeleton (`SearchSpace.skeleton`); the skeleton gives the
search network (mixed edges) and the discrete network a genotype is retrained as,
so the search and training loops build any space's networks without knowing it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from flax import nnx

from nasax.core.config import Config, ModelConfig
from nasax.core.errors import ConfigError
from nasax.core.registry import Registry
from nasax.supernet.discrete import DiscreteNetwork
from nasax.supernet.nb201 import NB201Network, NB201SearchNetwork
from nasax.supernet.network import GenotypeNetwork, SearchNetwork, Supernet
from nasax.supernet.spaces import SearchSpace, get_space, space_name


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
    """

    search_network: Callable[..., nnx.Module]
    discrete_network: Callable[..., nnx.Module]
    stem_multiplier: int | None = None
    auxiliary: bool = True

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
    "macro skeleton", {"darts": "nasax.supernet.skeletons", "nb201": "nasax.supernet.skeletons"}
)
SKELETONS.register("darts", Skeleton.of(SearchNetwork, DiscreteNetwork))
SKELETONS.register("nb201", Skeleton.of(NB201SearchNetwork, NB201Network))


def skeleton_of(space: SearchSpace | str) -> Skeleton:
    """The skeleton that builds networks of `space` (a SearchSpace or a registered name)."""
    space = get_space(space) if isinstance(space, str) else space
    return SKELETONS.get(space.skeleton)


def resolve_model(model: ModelConfig) -> ModelConfig:
    """The `model` section with its space as a name (a mapping defines one), once the
    space is known and its skeleton accepts the section; ValueError naming the key."""
    name = space_name(model.space)
    try:
        space = get_space(name)
    except KeyError as e:  # an unknown space (a definition that does not fit its base
        raise ValueError(f"model.space: {e.args[0]}") from None  # raises ValueError itself)
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
        return config.model_copy(update={"model": resolve_model(config.model)})
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None


__all__ = ["SKELETONS", "Skeleton", "resolve_model", "resolve_model_config", "skeleton_of"]
