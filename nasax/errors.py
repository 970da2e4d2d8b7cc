"""The project's error types: each carries one line that says what to fix."""


class NasaxError(Exception):
    """Base of every error nasax raises on purpose; the CLI prints it as one line."""


class ConfigError(NasaxError, ValueError):
    """A config key or value is wrong."""


class DataError(NasaxError, ValueError):
    """A dataset is missing or malformed."""


class GenotypeError(NasaxError, ValueError):
    """A genotype is malformed or does not fit the search space."""


class RunDirError(NasaxError):
    """A run directory cannot be used as asked (exists, missing, incomplete)."""


class NonFiniteError(NasaxError, FloatingPointError):
    """A loss or gradient became NaN or infinite."""
