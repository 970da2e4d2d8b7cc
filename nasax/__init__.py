"""nasax: differentiable neural architecture search in JAX, Flax and Optax.

The names below load on first use, so `import nasax` is cheap and imports neither JAX
nor any strategy; each registry loads the built-ins it is asked for (the table beside it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "DARTS_RNN_V1": "nasax.supernet",
    "DARTS_RNN_V2": "nasax.supernet",
    "DARTS_V1": "nasax.supernet",
    "DARTS_V2": "nasax.supernet",
    "DiscreteRNNCell": "nasax.supernet",
    "ENAS_RNN": "nasax.supernet",
    "RNNModel": "nasax.supernet",
    "RNNSearchModel": "nasax.supernet",
    "generate_text": "nasax.train.generate",
    "Config": "nasax.core.config",
    "ConfigError": "nasax.core.errors",
    "DataError": "nasax.core.errors",
    "Dataset": "nasax.loop.data",
    "DiscreteCell": "nasax.supernet.discrete",
    "DiscreteNetwork": "nasax.supernet.discrete",
    "Genotype": "nasax.supernet",
    "GenotypeError": "nasax.core.errors",
    "ImageClassifier": "nasax.app.classifier",
    "NasaxError": "nasax.core.errors",
    "SearchNetwork": "nasax.supernet",
    "SearchSpace": "nasax.supernet",
    "load_config": "nasax.search.options",
    "load_dataset": "nasax.loop.data",
    "load_genotype": "nasax.supernet.genotypes",
    "load_model": "nasax.train.export",
}
"""Public name -> the module that defines it."""

if TYPE_CHECKING:
    from nasax.app.classifier import ImageClassifier
    from nasax.core.config import Config
    from nasax.core.errors import ConfigError, DataError, GenotypeError, NasaxError
    from nasax.loop.data import Dataset, load_dataset
    from nasax.search.options import load_config
    from nasax.supernet import (
        DARTS_RNN_V1,
        DARTS_RNN_V2,
        DARTS_V1,
        DARTS_V2,
        ENAS_RNN,
        DiscreteRNNCell,
        Genotype,
        RNNModel,
        RNNSearchModel,
        SearchNetwork,
        SearchSpace,
        genotypes,
    )
    from nasax.supernet.discrete import DiscreteCell, DiscreteNetwork
    from nasax.supernet.genotypes import load_genotype
    from nasax.train.export import load_model
    from nasax.train.generate import generate_text


def _version() -> str:
    """The installed distribution's version (pyproject's), read once asked for; `unknown`
    in a source tree that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nasax")
    except PackageNotFoundError:
        return "unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    if name == "genotypes":
        return importlib.import_module("nasax.supernet.genotypes")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nasax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, "genotypes", "__version__"})


__all__ = [
    "DARTS_RNN_V1",
    "DARTS_RNN_V2",
    "DARTS_V1",
    "DARTS_V2",
    "ENAS_RNN",
    "Config",
    "ConfigError",
    "DataError",
    "Dataset",
    "DiscreteCell",
    "DiscreteNetwork",
    "DiscreteRNNCell",
    "Genotype",
    "GenotypeError",
    "ImageClassifier",
    "NasaxError",
    "RNNModel",
    "RNNSearchModel",
    "SearchNetwork",
    "SearchSpace",
    "generate_text",
    "genotypes",
    "load_config",
    "load_dataset",
    "load_genotype",
    "load_model",
]
