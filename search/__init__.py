"""Search strategies, the discretizer and the search task (`nasax.search`).

The built-in strategies load when their names are first asked for
(`nasax.search.strategy.BUILTIN_STRATEGIES`).
"""

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
