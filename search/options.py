"""The search layer's part of a config: the strategy's own section, checked against the
schema the strategy registered, and a whole config resolved for a run.

The core keeps `search.<name>` sections raw (`nasax.core.config`); this is where they are
checked, so a strategy is one module and one registration, and reading a config file
imports no strategy.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ValidationError

from nasax.core.config import (
    Config,
    SearchConfig,
    first_error,
    read_config,
    section_keys,
    unknown_key,
)
from nasax.core.config import validate_config as validate_core
from nasax.core.errors import ConfigError
from nasax.search.strategy import STRATEGIES
from nasax.supernet.skeletons import resolve_model_config


def strategy_options(search: SearchConfig) -> BaseModel:
    """The strategy's own section as the typed model its strategy registered."""
    return STRATEGIES.get(search.strategy).options.model_validate(search.options)


def resolve_search(search: SearchConfig) -> SearchConfig:
    """The `search` section with its strategy's options checked and their defaults filled
    in; ValueError naming the key otherwise."""
    name = search.strategy
    if name not in STRATEGIES:
        raise ValueError(f"search.strategy: {STRATEGIES.unknown_message(name)}")
    for other in search.strategy_sections:
        if other == name:
            continue
        if other in STRATEGIES:
            raise ValueError(
                f"search.{other}: options for strategy {other!r}, but search.strategy is "
                f"{name!r}; move them or change the strategy"
            )
        own = section_keys(SearchConfig)
        also = f", and search.{name} for the strategy's options"
        raise ValueError(unknown_key(f"search.{other}", own, [*own, *STRATEGIES], also))
    schema = STRATEGIES.get(name).options
    try:
        options = schema.model_validate(search.options)
    except ValidationError as e:
        raise ValueError(first_error(e, prefix=f"search.{name}", model=schema)) from None
    if search.epochs == 0 and not getattr(options, "supplies_weights", False):
        raise ValueError(
            "search.epochs must be at least 1, got 0; 0 (no weight training) needs trained "
            f"weights, e.g. search.evolution.weights_from (strategy: {name})"
        )
    if search.epochs > 0 and getattr(options, "trains_nothing", False):
        raise ValueError(
            f"search.epochs must be 0 for strategy {name!r}, which trains no weight; "
            f"got {search.epochs}"
        )
    return search.model_copy(update={"strategy_sections": {name: options.model_dump()}})


def resolve_config(config: Config, source: str = "config") -> Config:
    """`config` with what the core keeps raw checked and resolved: the model's space (by
    the supernet) and the strategy's section; one-line ConfigError otherwise."""
    config = resolve_model_config(config, source)
    try:
        search = resolve_search(config.search)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    return config.model_copy(update={"search": search})


def validate_config(data: Any, source: str = "config") -> Config:
    """Plain data validated as a whole Config: the core's sections and what the supernet
    and the search layer own; errors are one-line ConfigErrors."""
    return resolve_config(validate_core(data, source), source)


def load_config(name_or_path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Reads, overrides and validates a whole config (path or shipped name)."""
    data, source = read_config(name_or_path, overrides)
    return validate_config(data, source)


__all__ = [
    "load_config",
    "resolve_config",
    "resolve_search",
    "strategy_options",
    "validate_config",
]
