"""nasax: differentiable neural architecture search in JAX, Flax and Optax."""

from nasax import search as _search  # noqa: F401  (registers the strategies)
from nasax.config import Config, load_config
from nasax.data import Dataset, load_dataset
from nasax.errors import ConfigError, DataError, GenotypeError, NasaxError
from nasax.supernet import DARTS_V1, DARTS_V2, Genotype, SearchNetwork, SearchSpace

__all__ = [
    "DARTS_V1",
    "DARTS_V2",
    "Config",
    "ConfigError",
    "DataError",
    "Dataset",
    "Genotype",
    "GenotypeError",
    "NasaxError",
    "SearchNetwork",
    "SearchSpace",
    "load_config",
    "load_dataset",
]
