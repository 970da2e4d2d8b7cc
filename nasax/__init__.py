"""nasax: differentiable neural architecture search in JAX, Flax and Optax."""

from nasax import genotypes
from nasax import search as _search  # noqa: F401  (registers the strategies)
from nasax.classifier import ImageClassifier
from nasax.config import Config, load_config
from nasax.data import Dataset, load_dataset
from nasax.errors import ConfigError, DataError, GenotypeError, NasaxError
from nasax.supernet import DARTS_V1, DARTS_V2, Genotype, SearchNetwork, SearchSpace
from nasax.supernet.discrete import DiscreteCell, DiscreteNetwork
from nasax.supernet.genotypes import load_genotype
from nasax.train.export import load_model

__all__ = [
    "DARTS_V1",
    "DARTS_V2",
    "Config",
    "ConfigError",
    "DataError",
    "Dataset",
    "DiscreteCell",
    "DiscreteNetwork",
    "Genotype",
    "GenotypeError",
    "ImageClassifier",
    "NasaxError",
    "SearchNetwork",
    "SearchSpace",
    "genotypes",
    "load_config",
    "load_dataset",
    "load_genotype",
    "load_model",
]
