"""Genotypes for users: the type, the published DARTS cells, and loading by name or path."""

from nasax.supernet.genotypes import DARTS_V1, DARTS_V2, PUBLISHED, Genotype, load_genotype

__all__ = ["DARTS_V1", "DARTS_V2", "PUBLISHED", "Genotype", "load_genotype"]
