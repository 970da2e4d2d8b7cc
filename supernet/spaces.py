"""Search spaces as data: which ops an edge may hold and how a cell's nodes connect."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nasax.core.config import first_error
from nasax.core.registry import Registry


@dataclass(frozen=True)
class SearchSpace:
    """A cell search space.

    A cell has `n_inputs` input nodes and `n_nodes` intermediate nodes; intermediate node
    `i` has an edge from every earlier node (inputs and intermediates), so edges are
    numbered node by node, source by source, as in the DARTS reference.

    Attributes:
        name: registry name, recorded in genotypes so they can be checked against it.
        ops: candidate op names (keys of the op registry); `none` is the zero op.
        n_inputs: input nodes of a cell (2 in DARTS: the two previous cells).
        n_nodes: intermediate nodes.
        edges_per_node: incoming edges a derived cell keeps per node (None: all of them).
        pool_norms: mixed edges follow pooling ops with a non-affine BatchNorm (DARTS).
        cell_kinds: the kinds of searched cell, each with its own architecture parameters
            (DARTS: normal and reduction cells; NAS-Bench-201 has one kind).
        cell_output: "concat": a cell outputs the concatenation of its intermediate
            nodes (DARTS); "last": it outputs its last node (NAS-Bench-201); "mean": it
            outputs the mean of its intermediate nodes (DARTS' recurrent cell).
        derive_none: the discretizer may put `none` on an edge (NAS-Bench-201 takes the
            argmax over every op); DARTS never picks it.
        skeleton: name of the macro skeleton that stacks the cells into networks
            (see `nasax.supernet.skeletons`).
    """

    name: str
    ops: tuple[str, ...]
    n_inputs: int = 2
    n_nodes: int = 4
    edges_per_node: int | None = 2
    pool_norms: bool = True
    cell_kinds: tuple[str, ...] = ("normal", "reduce")
    cell_output: Literal["concat", "last", "mean"] = "concat"
    derive_none: bool = False
    skeleton: str = "darts"

    @cached_property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """(node, source) per edge; node counts intermediate nodes from 0, sources all nodes."""
        return tuple(
            (node, src) for node in range(self.n_nodes) for src in range(self.n_inputs + node)
        )

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def n_ops(self) -> int:
        return len(self.ops)

    @property
    def concat(self) -> tuple[int, ...]:
        """Indices (counting inputs) of the nodes that form a cell's output."""
        first = self.n_inputs + self.n_nodes - 1 if self.cell_output == "last" else self.n_inputs
        return tuple(range(first, self.n_inputs + self.n_nodes))

    def node_edges(self, node: int) -> range:
        """Indices of the edges entering intermediate node `node`."""
        start = sum(self.n_inputs + k for k in range(node))
        return range(start, start + self.n_inputs + node)


SPACES: Registry[SearchSpace] = Registry(
    "search space",
    dict.fromkeys(("darts", "nb201", "darts_rnn", "enas_rnn"), "nasax.supernet.spaces"),
)

DARTS_OPS = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

DARTS_SPACE = SPACES.register("darts", SearchSpace(name="darts", ops=DARTS_OPS))

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
"""NAS-Bench-201's ops, in its order (Dong & Yang, ICLR 2020)."""

NB201_SPACE = SPACES.register(
    "nb201",
    SearchSpace(
        name="nb201",
        ops=NB201_OPS,
        n_inputs=1,
        n_nodes=3,
        edges_per_node=None,
        pool_norms=False,
        cell_kinds=("normal",),
        cell_output="last",
        derive_none=True,
        skeleton="nb201",
    ),
)

DARTS_RNN_OPS = ("none", "tanh", "relu", "sigmoid", "identity")
"""The DARTS recurrent cell's ops, in its order (Liu et al., ICLR 2019)."""

DARTS_RNN_SPACE = SPACES.register(
    "darts_rnn",
    SearchSpace(
        name="darts_rnn",
        ops=DARTS_RNN_OPS,
        n_inputs=1,
        n_nodes=8,
        edges_per_node=1,
        pool_norms=False,
        cell_kinds=("recurrent",),
        cell_output="mean",
        skeleton="rnn",
    ),
)
"""DARTS' recurrent space: input 0 is the first state (from x and the previous hidden
state through a highway), every node reads each earlier state (36 edges), a derived node
keeps one input and one op, and the cell outputs the mean of its 8 nodes."""

ENAS_RNN_OPS = ("tanh", "relu", "identity", "sigmoid")
"""ENAS' recurrent activations, in its order (Pham et al., ICML 2018)."""

ENAS_RNN_SPACE = SPACES.register(
    "enas_rnn",
    dataclasses.replace(DARTS_RNN_SPACE, name="enas_rnn", ops=ENAS_RNN_OPS),
)
"""ENAS' recurrent space on DARTS' cell: each node picks one earlier state and one
activation, with no `none` op (ENAS' own cell averages only the nodes no other node reads;
its published cell, `ENAS_RNN`, keeps that concat)."""


class SpaceDefinition(BaseModel):
    """A search space defined in the config from a registered one (`model.space` as a
    mapping). Its name records the definition, `darts:nodes=3:inputs_per_node=1:ops=a,b`,
    so a genotype of it names the space it fits; `get_space` builds the space from that
    name."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field(description="the registered space it starts from (darts, nb201)")
    ops: list[str] | None = Field(None, min_length=1, description="a subset of base's ops")
    nodes: int | None = Field(None, ge=1, description="intermediate nodes per cell")
    inputs_per_node: int | None = Field(
        None, ge=1, description="edges a derived cell keeps per node (spaces that keep some)"
    )

    def name(self) -> str:
        """The space's name: the base, then each option given, in a fixed order."""
        parts = [self.base]
        if self.nodes is not None:
            parts.append(f"nodes={self.nodes}")
        if self.inputs_per_node is not None:
            parts.append(f"inputs_per_node={self.inputs_per_node}")
        if self.ops is not None:
            parts.append("ops=" + ",".join(self.ops))
        return ":".join(parts)

    @classmethod
    def parse(cls, name: str) -> SpaceDefinition:
        """The definition a name written by `name()` records; ValueError if it is none."""
        base, *parts = name.split(":")
        data: dict[str, Any] = {"base": base}
        for part in parts:
            key, sep, value = part.partition("=")
            if not sep or key not in ("nodes", "inputs_per_node", "ops"):
                raise ValueError(
                    f"space name {name!r}: {part!r} is not nodes=N, inputs_per_node=N or "
                    "ops=a,b,..."
                )
            data[key] = value.split(",") if key == "ops" else value
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ValueError(f"space name {name!r}: {first_error(e, model=cls)}") from None


def space_name(space: str | dict[str, Any]) -> str:
    """The name of `model.space`: a name as given, a mapping as the name that records
    the definition; ValueError naming the key if the mapping is not a definition."""
    if not isinstance(space, dict):
        return space
    try:
        return SpaceDefinition.model_validate(space).name()
    except ValidationError as e:
        raise ValueError(first_error(e, "model.space", SpaceDefinition)) from None


def get_space(name: str | dict[str, Any]) -> SearchSpace:
    """The search space `name`: a registered one, or one a config defined from a
    registered one (`darts:nodes=3:ops=...` or that definition as a mapping, see
    `SpaceDefinition`).

    Raises:
        KeyError: `name` is not registered, nor a definition from a registered space.
        ValueError: the definition does not fit its base space.
    """
    name = space_name(name)
    if ":" not in name:
        return SPACES.get(name)
    return _derived(SpaceDefinition.parse(name).name())


@functools.cache
def _derived(name: str) -> SearchSpace:
    """The space a (canonical) definition name describes, built once per process."""
    d = SpaceDefinition.parse(name)
    base = SPACES.get(d.base)
    changes: dict[str, Any] = {"name": name}
    if d.ops is not None:
        unknown = [op for op in d.ops if op not in base.ops]
        if unknown or len(set(d.ops)) != len(d.ops):
            raise ValueError(
                f"model.space.ops must list distinct ops of space {base.name!r} "
                f"({', '.join(base.ops)}); got {', '.join(d.ops)}"
            )
        if not base.derive_none and set(d.ops) <= {"none"}:
            raise ValueError(
                f"model.space.ops: space {base.name!r} never derives 'none'; list another op"
            )
        changes["ops"] = tuple(d.ops)
    if d.nodes is not None:
        changes["n_nodes"] = d.nodes
    if d.inputs_per_node is not None:
        if base.edges_per_node is None:
            raise ValueError(
                f"model.space.inputs_per_node: space {base.name!r} keeps every edge of a "
                "cell; leave inputs_per_node out"
            )
        if d.inputs_per_node > base.n_inputs:
            raise ValueError(
                f"model.space.inputs_per_node is {d.inputs_per_node}, but a cell's first node "
                f"has only {base.n_inputs} inputs; use 1..{base.n_inputs}"
            )
        changes["edges_per_node"] = d.inputs_per_node
    return dataclasses.replace(base, **changes)
