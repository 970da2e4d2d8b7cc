"""Genotypes: the discrete cells a search derives, their JSON form, and published ones."""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasax.errors import GenotypeError
from nasax.io import atomic_write_json
from nasax.supernet.spaces import SPACES, SearchSpace

Node = tuple[tuple[str, int], ...]
"""The (op name, input index) pairs entering one intermediate node."""


@dataclass(frozen=True)
class Genotype:
    """A normal and a reduction cell, each a list of nodes plus the nodes it concatenates.

    Input index 0 and 1 are the cell's inputs, 2.. the intermediate nodes in order.
    """

    normal: tuple[Node, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Node, ...]
    reduce_concat: tuple[int, ...]
    space: str = "darts"

    def cell(self, kind: str) -> tuple[tuple[Node, ...], tuple[int, ...]]:
        """(nodes, concat) of the cell kind `normal` or `reduce`."""
        if kind == "normal":
            return self.normal, self.normal_concat
        if kind == "reduce":
            return self.reduce, self.reduce_concat
        raise GenotypeError(f"cell kind must be 'normal' or 'reduce', got {kind!r}")

    def validate(self, space: SearchSpace | None = None) -> Genotype:
        """Checks the genotype fits `space` (default: its own); returns it or raises."""
        if space is None:
            if self.space not in SPACES:
                raise GenotypeError(f"genotype: {SPACES.unknown_message(self.space)}")
            space = SPACES.get(self.space)
        if self.space != space.name:
            raise GenotypeError(
                f"genotype is for space {self.space!r}, but the search space is {space.name!r}"
            )
        for kind in ("normal", "reduce"):
            nodes, concat = self.cell(kind)
            _check_cell(kind, nodes, concat, space)
        return self

    def to_dict(self) -> dict[str, Any]:
        def nodes(cell: tuple[Node, ...]) -> list[list[list[Any]]]:
            return [[[op, src] for op, src in node] for node in cell]

        return {
            "space": self.space,
            "normal": nodes(self.normal),
            "normal_concat": list(self.normal_concat),
            "reduce": nodes(self.reduce),
            "reduce_concat": list(self.reduce_concat),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any) -> Genotype:
        """Builds a genotype from its JSON object; malformed data raises GenotypeError."""
        if not isinstance(data, dict):
            raise GenotypeError(f"genotype must be a JSON object, got {type(data).__name__}")
        keys = {"space", "normal", "normal_concat", "reduce", "reduce_concat"}
        unknown = set(data) - keys
        missing = keys - {"space"} - set(data)
        if unknown or missing:
            raise GenotypeError(
                f"genotype keys: unknown {sorted(unknown)}, missing {sorted(missing)}; "
                f"expected {sorted(keys)}"
            )
        space = data.get("space", "darts")
        if not isinstance(space, str):
            raise GenotypeError(f"genotype.space must be a string, got {space!r}")
        return cls(
            normal=_parse_nodes("normal", data["normal"]),
            normal_concat=_parse_ints("normal_concat", data["normal_concat"]),
            reduce=_parse_nodes("reduce", data["reduce"]),
            reduce_concat=_parse_ints("reduce_concat", data["reduce_concat"]),
            space=space,
        )

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"genotype is not valid JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Genotype:
        """Reads and validates a genotype.json."""
        path = Path(path)
        if not path.is_file():
            raise GenotypeError(f"genotype file {str(path)!r} does not exist")
        try:
            return cls.from_json(path.read_text()).validate()
        except GenotypeError as e:
            raise GenotypeError(f"{path}: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Writes the genotype as JSON, atomically."""
        atomic_write_json(path, self.to_dict())


def _parse_ints(field: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise GenotypeError(f"genotype.{field} must be a list of integers, got {value!r}")
    return tuple(value)


def _parse_nodes(field: str, value: Any) -> tuple[Node, ...]:
    if not isinstance(value, list):
        raise GenotypeError(f"genotype.{field} must be a list of nodes, got {value!r}")
    nodes = []
    for n, node in enumerate(value):
        if not isinstance(node, list):
            raise GenotypeError(f"genotype.{field}[{n}] must be a list of [op, input] pairs")
        pairs = []
        for pair in node:
            ok = (
                isinstance(pair, list)
                and len(pair) == 2
                and isinstance(pair[0], str)
                and isinstance(pair[1], int)
                and not isinstance(pair[1], bool)
            )
            if not ok:
                raise GenotypeError(
                    f"genotype.{field}[{n}]: each edge must be [op_name, input_index], got {pair!r}"
                )
            pairs.append((pair[0], pair[1]))
        nodes.append(tuple(pairs))
    return tuple(nodes)


def _check_cell(
    kind: str, nodes: tuple[Node, ...], concat: tuple[int, ...], space: SearchSpace
) -> None:
    if len(nodes) != space.n_nodes:
        raise GenotypeError(
            f"genotype.{kind} has {len(nodes)} nodes; space {space.name!r} has {space.n_nodes}"
        )
    for n, node in enumerate(nodes):
        want = space.edges_per_node or space.n_inputs + n
        if len(node) != want:
            raise GenotypeError(
                f"genotype.{kind}[{n}] has {len(node)} edges; space {space.name!r} keeps {want}"
            )
        for op, src in node:
            if op not in space.ops or op == "none":
                allowed = [o for o in space.ops if o != "none"]
                raise GenotypeError(
                    f"genotype.{kind}[{n}]: op {op!r} is not in space {space.name!r}; "
                    f"allowed: {', '.join(allowed)}"
                )
            if not 0 <= src < space.n_inputs + n:
                raise GenotypeError(
                    f"genotype.{kind}[{n}]: input index {src} out of range; node {n} can read "
                    f"0..{space.n_inputs + n - 1}"
                )
    n_states = space.n_inputs + space.n_nodes
    if not concat or any(not 0 <= i < n_states for i in concat) or len(set(concat)) != len(concat):
        raise GenotypeError(
            f"genotype.{kind}_concat {list(concat)} must list distinct node indices in "
            f"0..{n_states - 1}"
        )


def _nodes(*pairs: tuple[str, int]) -> tuple[Node, ...]:
    """Groups a DARTS-style flat list of (op, input) pairs two per node."""
    return tuple(tuple(pairs[i : i + 2]) for i in range(0, len(pairs), 2))


# Published cells of the DARTS paper (Liu et al., ICLR 2019): first and second order.
DARTS_V1 = Genotype(
    normal=_nodes(
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),
        ("skip_connect", 0),
        ("sep_conv_3x3", 1),
        ("skip_connect", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),
        ("skip_connect", 2),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=_nodes(
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("skip_connect", 2),
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 0),
        ("skip_connect", 2),
        ("skip_connect", 2),
        ("avg_pool_3x3", 0),
    ),
    reduce_concat=(2, 3, 4, 5),
)
DARTS_V2 = Genotype(
    normal=_nodes(
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1),
        ("skip_connect", 0),
        ("skip_connect", 0),
        ("dil_conv_3x3", 2),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=_nodes(
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
        ("max_pool_3x3", 0),
        ("skip_connect", 2),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
    ),
    reduce_concat=(2, 3, 4, 5),
)
PUBLISHED = {"DARTS_V1": DARTS_V1, "DARTS_V2": DARTS_V2, "DARTS": DARTS_V2}


def load_genotype(name_or_path: str | os.PathLike) -> Genotype:
    """A published genotype by name (`DARTS_V2`), a genotype.json, or a run directory with one."""
    text = str(name_or_path)
    if text in PUBLISHED:
        return PUBLISHED[text]
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "genotype.json"
        if not path.is_file():
            raise GenotypeError(f"{name_or_path} is a directory without a genotype.json")
    elif not path.exists():
        close = difflib.get_close_matches(text, list(PUBLISHED), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise GenotypeError(
            f"genotype {text!r} is neither a file nor a published genotype{hint}; published: "
            f"{', '.join(PUBLISHED)}"
        )
    return Genotype.load(path)
