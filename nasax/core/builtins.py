"""The one list of what ships with nasax: strategies, ops, spaces, skeletons, model checks.

Each entry names the module whose import registers it. A registry reads this list the
first time it is asked for its names or a missing one (`Registry(kind, builtins=...)`),
so a config can name any built-in whatever was imported before, and `import nasax`
imports none of them. A user's own op or strategy registers the same way, by importing
the module that defines it.
"""

from __future__ import annotations

STRATEGIES: dict[str, str] = {
    "darts": "nasax.search.darts",
    "gdas": "nasax.search.gdas",
    "snas": "nasax.search.snas",
    "drnas": "nasax.search.drnas",
    "pcdarts": "nasax.search.pcdarts",
    "beta_darts": "nasax.search.beta_darts",
    "darts_minus": "nasax.search.darts_minus",
    "sdarts_rs": "nasax.search.sdarts",
    "random_ws": "nasax.search.random_ws",
    "enas": "nasax.search.enas",
    "evolution": "nasax.search.evolution",
}
"""Search strategies (`search.strategy`) and their option schemas (`search.<name>`)."""

OPS: dict[str, str] = dict.fromkeys(
    (
        "none",
        "max_pool_3x3",
        "avg_pool_3x3",
        "skip_connect",
        "sep_conv_3x3",
        "dil_conv_3x3",
        "sep_conv_5x5",
        "dil_conv_5x5",
        "sep_conv_7x7",
        "conv_7x1_1x7",
        "nor_conv_1x1",
        "nor_conv_3x3",
    ),
    "nasax.supernet.ops",
)
"""Primitive ops of cell edges."""

SPACES: dict[str, str] = {"darts": "nasax.supernet.spaces", "nb201": "nasax.supernet.spaces"}
"""Search spaces (`model.space`)."""

SKELETONS: dict[str, str] = {
    "darts": "nasax.supernet.skeletons",
    "nb201": "nasax.supernet.skeletons",
}
"""Macro skeletons that stack a space's cells into networks."""

MODEL_CHECKS: dict[str, str] = {"search space": "nasax.supernet.skeletons"}
"""Checks of the config's `model` section."""

__all__ = ["MODEL_CHECKS", "OPS", "SKELETONS", "SPACES", "STRATEGIES"]
