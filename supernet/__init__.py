"""Search spaces, primitive ops, cells and networks (`nasax.supernet`)."""

from nasax.supernet.cells import Cell, CellPlan, FixedEdge, MixedEdge, plan_cells
from nasax.supernet.discrete import DiscreteCell, DiscreteNetwork
from nasax.supernet.genotypes import DARTS_V1, DARTS_V2, Genotype, load_genotype
from nasax.supernet.network import ArchParam, SearchNetwork
from nasax.supernet.ops import OPS, register_op
from nasax.supernet.spaces import DARTS_SPACE, SPACES, SearchSpace, get_space

__all__ = [
    "DARTS_SPACE",
    "DARTS_V1",
    "DARTS_V2",
    "OPS",
    "SPACES",
    "ArchParam",
    "Cell",
    "CellPlan",
    "DiscreteCell",
    "DiscreteNetwork",
    "FixedEdge",
    "Genotype",
    "MixedEdge",
    "SearchNetwork",
    "SearchSpace",
    "get_space",
    "load_genotype",
    "plan_cells",
    "register_op",
]
