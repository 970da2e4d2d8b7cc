"""Genotypes for users: the type, the published cells (DARTS, NASNet, AmoebaNet,
NAS-Bench-201), and loading by name, arch string or path."""

from nasax.supernet.genotypes import (
    AMOEBANET,
    DARTS_V1,
    DARTS_V2,
    NASNET,
    NB201_LARGEST,
    NB201_RESNET,
    PUBLISHED,
    Genotype,
    load_genotype,
)

__all__ = [
    "AMOEBANET",
    "DARTS_V1",
    "DARTS_V2",
    "NASNET",
    "NB201_LARGEST",
    "NB201_RESNET",
    "PUBLISHED",
    "Genotype",
    "load_genotype",
]
