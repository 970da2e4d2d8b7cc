"""Search spaces, primitive ops, cells and networks (`nasax.supernet`)."""

from nasax.supernet.cells import Cell, CellPlan, FixedEdge, MixedEdge, PlainCell, plan_cells
from nasax.supernet.discrete import DiscreteCell, DiscreteNetwork
from nasax.supernet.genotypes import (
    AMOEBANET,
    DARTS_V1,
    DARTS_V2,
    NASNET,
    NB201_LARGEST,
    NB201_RESNET,
    Genotype,
    load_genotype,
)
from nasax.supernet.nb201 import NB201Cell, NB201Network, NB201SearchNetwork
from nasax.supernet.network import ArchParam, Forward, GenotypeNetwork, SearchNetwork, Supernet
from nasax.supernet.ops import OPS, register_op
from nasax.supernet.skeletons import SKELETONS, Skeleton, skeleton_of
from nasax.supernet.spaces import DARTS_SPACE, NB201_SPACE, SPACES, SearchSpace, get_space

__all__ = [
    "AMOEBANET",
    "DARTS_SPACE",
    "DARTS_V1",
    "DARTS_V2",
    "NASNET",
    "NB201_LARGEST",
    "NB201_RESNET",
    "NB201_SPACE",
    "OPS",
    "SKELETONS",
    "SPACES",
    "ArchParam",
    "Cell",
    "CellPlan",
    "DiscreteCell",
    "DiscreteNetwork",
    "FixedEdge",
    "Forward",
    "Genotype",
    "GenotypeNetwork",
    "MixedEdge",
    "NB201Cell",
    "NB201Network",
    "NB201SearchNetwork",
    "PlainCell",
    "SearchNetwork",
    "SearchSpace",
    "Skeleton",
    "Supernet",
    "get_space",
    "load_genotype",
    "plan_cells",
    "register_op",
    "skeleton_of",
]
