"""Search strategies, the discretizer and the search loop (`nasax.search`)."""

from nasax.search import (  # noqa: F401  (importing registers the strategies)
    beta_darts,
    darts,
    darts_minus,
    drnas,
    enas,
    evolution,
    gdas,
    pcdarts,
    random_ws,
    sdarts,
    snas,
)
from nasax.search.discretize import derive_cell, derive_genotype
from nasax.search.strategy import STRATEGIES, SearchSetup, Strategy, register_strategy

__all__ = [
    "STRATEGIES",
    "SearchSetup",
    "Strategy",
    "derive_cell",
    "derive_genotype",
    "register_strategy",
]
