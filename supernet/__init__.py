"""Search spaces, primitive ops, cells and networks (`nasax.supernet`)."""

from nasax.supernet.cells import Cell, CellPlan, FixedEdge, MixedEdge, PlainCell, plan_cells
from nasax.supernet.discrete import DiscreteCell, DiscreteNetwork
from nasax.supernet.genotypes import (
    AMOEBANET,
    DARTS_RNN_V1,
    DARTS_RNN_V2,
    DARTS_V1,
    DARTS_V2,
    ENAS_RNN,
    NASNET,
    NB201_LARGEST,
    NB201_RESNET,
    Genotype,
    load_genotype,
)
from nasax.supernet.nb201 import NB201Cell, NB201Network, NB201SearchNetwork
from nasax.supernet.network import ArchParam, Forward, GenotypeNetwork, SearchNetwork, Supernet
from nasax.supernet.ops import OPS, register_op
from nasax.supernet.rnn_cells import DiscreteRNNCell, NodePath, RNNSearchCell
from nasax.supernet.rnn_network import Dropouts, LMOutput, RNNModel, RNNSearchModel
from nasax.supernet.rnn_ops import RNN_OPS, register_rnn_op
from nasax.supernet.skeletons import SKELETONS, Skeleton, skeleton_of
from nasax.supernet.spaces import (
    DARTS_RNN_SPACE,
    DARTS_SPACE,
    ENAS_RNN_SPACE,
    NB201_SPACE,
    SPACES,
    SearchSpace,
    get_space,
)

__all__ = [
    "AMOEBANET",
    "DARTS_RNN_SPACE",
    "DARTS_RNN_V1",
    "DARTS_RNN_V2",
    "DARTS_SPACE",
    "DARTS_V1",
    "DARTS_V2",
    "ENAS_RNN",
    "ENAS_RNN_SPACE",
    "NASNET",
    "NB201_LARGEST",
    "NB201_RESNET",
    "NB201_SPACE",
    "OPS",
    "RNN_OPS",
    "SKELETONS",
    "SPACES",
    "ArchParam",
    "Cell",
    "CellPlan",
    "DiscreteCell",
    "DiscreteNetwork",
    "DiscreteRNNCell",
    "Dropouts",
    "FixedEdge",
    "Forward",
    "Genotype",
    "GenotypeNetwork",
    "LMOutput",
    "MixedEdge",
    "NB201Cell",
    "NB201Network",
    "NB201SearchNetwork",
    "NodePath",
    "PlainCell",
    "RNNModel",
    "RNNSearchCell",
    "RNNSearchModel",
    "SearchNetwork",
    "SearchSpace",
    "Skeleton",
    "Supernet",
    "get_space",
    "load_genotype",
    "plan_cells",
    "register_op",
    "register_rnn_op",
    "skeleton_of",
]
