"""Genotypes for users: the type, the published DARTS and NAS-Bench-201 cells, and loading
by name, arch string or path."""

from nasax.supernet.genotypes import (
    DARTS_V1,
    DARTS_V2,
    NB201_LARGEST,
    NB201_RESNET,
    PUBLISHED,
    Genotype,
    load_genotype,
)

__all__ = [
    "DARTS_V1",
    "DARTS_V2",
    "NB201_LARGEST",
    "NB201_RESNET",
    "PUBLISHED",
    "Genotype",
    "load_genotype",
]
