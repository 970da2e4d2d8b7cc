"""Genotypes: the discrete cells a search derives, their JSON form, and published ones."""

from __future__ import annotations

import ast
import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasax.core.errors import GenotypeError
from nasax.core.io import atomic_write_json
from nasax.supernet.spaces import SPACES, SearchSpace, get_space

Node = tuple[tuple[str, int], ...]
"""The (op name, input index) pairs entering one intermediate node."""

CellGenotype = tuple[tuple[Node, ...], tuple[int, ...]]
"""One cell: its intermediate nodes and the node indices it concatenates."""


@dataclass(frozen=True, init=False)
class Genotype:
    """One discrete cell per cell kind of its space: `cells[kind] = (nodes, concat)`.

    Input index 0 and 1 are the cell's inputs, 2.. the intermediate nodes in order (in
    a space with one input, 0 is the input and 1.. the nodes); `concat` lists the node
    indices whose states form the cell's output. A cell kind reads as an attribute too
    (`genotype.normal`, `genotype.normal_concat`). One-cell genotypes (NAS-Bench-201)
    print as NAS-Bench-201 strings (`to_arch_string`).

    The papers' repositories write genotypes as keywords, and those load as written:
    `Genotype(normal=[("sep_conv_3x3", 0), ...], normal_concat=[2, 3, 4, 5], reduce=...,
    reduce_concat=...)` (DARTS) or `Genotype(recurrent=[("sigmoid", 0), ...],
    concat=range(1, 9))` (DARTS' recurrent cell). Each `<kind>` is a flat list of
    (op, input) pairs, taken node by node as the space keeps them (two per node in
    DARTS, one in the recurrent spaces, every earlier node in NAS-Bench-201), or a list
    of nodes; `concat` names the output of a one-kind genotype. Without `space`, the
    genotype belongs to the first registered space with exactly those cell kinds
    (`darts` for normal and reduce, `darts_rnn` for recurrent, `nb201` for normal).
    """

    cells: dict[str, CellGenotype]
    space: str = "darts"

    def __init__(
        self,
        cells: Mapping[str, tuple[Any, Any]] | None = None,
        space: str | None = None,
        **fields: Any,
    ) -> None:
        if fields:
            if cells is not None:
                raise GenotypeError(
                    "give a genotype's cells either as Genotype({kind: (nodes, concat)}) or as "
                    "keywords (normal=..., normal_concat=...), not both"
                )
            cells, space = _cells_from_keywords(fields, space)
        elif cells is None:
            raise GenotypeError(
                "a genotype needs its cells, e.g. Genotype(normal=[...], normal_concat=[...], "
                "reduce=[...], reduce_concat=[...])"
            )
        space = "darts" if space is None else space
        frozen = {
            kind: (tuple(tuple(tuple(pair) for pair in node) for node in nodes), tuple(concat))
            for kind, (nodes, concat) in cells.items()
        }
        object.__setattr__(self, "cells", frozen)
        object.__setattr__(self, "space", space)

    @classmethod
    def darts(
        cls,
        normal: Any,
        normal_concat: Any,
        reduce: Any,
        reduce_concat: Any,
        space: str = "darts",
    ) -> Genotype:
        """A genotype in the DARTS reference's four fields (normal and reduction cells)."""
        return cls({"normal": (normal, normal_concat), "reduce": (reduce, reduce_concat)}, space)

    def __hash__(self) -> int:
        return hash((self.space, tuple(sorted(self.cells.items()))))

    def __getattr__(self, name: str) -> Any:
        """`<kind>` is the nodes of that cell, `<kind>_concat` its concat."""
        cells = self.__dict__.get("cells", {})
        kind, concat = name.removesuffix("_concat"), name.endswith("_concat")
        if kind in cells:
            return cells[kind][1 if concat else 0]
        raise AttributeError(
            f"Genotype has no attribute {name!r} (its cells: {', '.join(cells) or 'none'})"
        )

    def cell(self, kind: str) -> CellGenotype:
        """(nodes, concat) of the cell kind `kind`."""
        if kind not in self.cells:
            raise GenotypeError(
                f"genotype has no {kind!r} cell; its cells: {', '.join(self.cells) or 'none'}"
            )
        return self.cells[kind]

    def wiring(self, kind: str) -> tuple[list[tuple[int, int]], list[str]]:
        """The cell `kind` as edges: (node, input) per edge and the op on each, in order."""
        nodes, _ = self.cell(kind)
        wiring = [(n, src) for n, node in enumerate(nodes) for _, src in node]
        return wiring, [op for node in nodes for op, _ in node]

    def validate(self, space: SearchSpace | None = None, *, searched: bool = False) -> Genotype:
        """Checks the genotype builds in `space`'s skeleton (default: its own space);
        returns it or raises GenotypeError.

        A cell of a space that keeps a fixed number of inputs per node (DARTS) may have
        any number of nodes and any registered op, as the DARTS reference's network
        builds published cells such as NASNet's; with `searched`, the cell must be one
        the space's search can express (its node count, its ops).
        """
        space = self.resolve_space() if space is None else space
        if self.space != space.name:
            published = [name for name, g in PUBLISHED.items() if g.space == space.name]
            hint = f" (published: {', '.join(published)})" if published else ""
            raise GenotypeError(
                f"genotype is for space {self.space!r}, but the search space is {space.name!r}; "
                f"use a genotype of space {space.name!r}{hint}"
            )
        for kind in space.cell_kinds:
            if kind not in self.cells:
                raise GenotypeError(
                    f"genotype has no {kind!r} cell; space {space.name!r} has "
                    f"{', '.join(space.cell_kinds)} cells"
                )
        for kind, (nodes, concat) in self.cells.items():
            if kind not in space.cell_kinds:
                raise GenotypeError(
                    f"genotype.{kind}: space {space.name!r} has no {kind} cell (its cells: "
                    f"{', '.join(space.cell_kinds)}); leave {kind} out"
                )
            _check_cell(kind, nodes, concat, space, searched)
        return self

    def resolve_space(self) -> SearchSpace:
        """The registered search space this genotype names."""
        try:
            return get_space(self.space)
        except (KeyError, ValueError) as e:
            raise GenotypeError(f"genotype: {e.args[0]}") from None

    def to_arch_string(self) -> str:
        """The NAS-Bench-201 string of a one-cell genotype, e.g.
        ``|nor_conv_3x3~0|+|skip_connect~0|none~1|+|...~0|...~1|...~2|``: nodes joined
        by ``+``, each listing ``op~input`` per incoming edge, inputs in order."""
        space = self.resolve_space()
        if len(space.cell_kinds) != 1:
            raise GenotypeError(
                f"the arch string form holds one cell; space {space.name!r} has "
                f"{' and '.join(space.cell_kinds)} cells"
            )
        nodes, _ = self.cell(space.cell_kinds[0])
        return "+".join(
            "|" + "".join(f"{op}~{src}|" for op, src in sorted(node, key=lambda e: e[1]))
            for node in nodes
        )

    @classmethod
    def from_arch_string(cls, text: str, space: str = "nb201") -> Genotype:
        """Parses and validates a NAS-Bench-201 string (see `to_arch_string`) for `space`."""
        if not isinstance(text, str):
            raise GenotypeError(f"arch string must be a string, got {type(text).__name__}")
        if space not in SPACES:
            raise GenotypeError(f"arch string: {SPACES.unknown_message(space)}")
        target = SPACES.get(space)
        if len(target.cell_kinds) != 1:
            raise GenotypeError(
                f"the arch string form holds one cell; space {space!r} has "
                f"{' and '.join(target.cell_kinds)} cells"
            )
        nodes = tuple(_parse_arch_node(n, part) for n, part in enumerate(text.strip().split("+")))
        genotype = cls({target.cell_kinds[0]: (nodes, target.concat)}, space=space)
        try:
            return genotype.validate(target, searched=True)
        except GenotypeError as e:
            raise GenotypeError(f"arch string {text.strip()!r}: {e}") from None

    def __str__(self) -> str:
        """The NAS-Bench-201 string for a one-cell space's genotype, else the repr."""
        try:
            one_cell = len(self.resolve_space().cell_kinds) == 1
        except GenotypeError:
            one_cell = False
        return self.to_arch_string() if one_cell else repr(self)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: `space`, then `<kind>` (nodes as [op, input] pairs) and
        `<kind>_concat` per cell kind, the DARTS reference's field names."""
        data: dict[str, Any] = {"space": self.space}
        for kind, (nodes, concat) in self.cells.items():
            data[kind] = [[[op, src] for op, src in node] for node in nodes]
            data[f"{kind}_concat"] = list(concat)
        return data

    @classmethod
    def from_python(cls, text: str) -> Genotype:
        """Parses a genotype as the papers' repositories print it, `Genotype(normal=[...],
        normal_concat=range(2, 6), ...)` (optionally `NAME = Genotype(...)`), without
        running it: literals and `range(...)` only."""
        try:
            tree = ast.parse(text.strip(), mode="exec")
        except SyntaxError as e:
            raise GenotypeError(
                f"genotype text is not a Genotype(...) expression: {e.msg}"
            ) from None
        body = tree.body[0] if len(tree.body) == 1 else None
        call = body.value if isinstance(body, (ast.Expr, ast.Assign)) else None
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Genotype"):
            raise GenotypeError(
                "genotype text must be one Genotype(...) call, e.g. Genotype(normal=[...], "
                "normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=[2, 3, 4, 5])"
            )
        if call.args:
            raise GenotypeError("genotype text: give the cells as keywords (normal=..., ...)")
        fields = {kw.arg: _literal(kw.arg, kw.value) for kw in call.keywords}
        if None in fields:
            raise GenotypeError("genotype text: **mappings are not supported; write keywords")
        space = fields.pop("space", None)
        return cls(space=space, **fields).validate()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any) -> Genotype:
        """Builds a genotype from its JSON object; malformed data raises GenotypeError.

        Every cell kind comes as `<kind>` and `<kind>_concat`. A kind whose nodes and
        concat are both empty is dropped: files of one-cell spaces written before cells
        were generic hold an empty `reduce`.
        """
        if not isinstance(data, dict):
            raise GenotypeError(f"genotype must be a JSON object, got {type(data).__name__}")
        space = data.get("space", "darts")
        if not isinstance(space, str):
            raise GenotypeError(f"genotype.space must be a string, got {space!r}")
        kinds = [k for k in data if k != "space" and not k.endswith("_concat")]
        expected = {"space", *kinds, *(f"{k}_concat" for k in kinds)}
        unknown, missing = set(data) - expected, expected - {"space"} - set(data)
        if unknown or missing or not kinds:
            raise GenotypeError(
                f"genotype keys: unknown {sorted(unknown)}, missing {sorted(missing)}; "
                "expected 'space' and, per cell kind, '<kind>' and '<kind>_concat' (e.g. "
                "'normal', 'normal_concat', 'reduce', 'reduce_concat')"
            )
        cells = {
            kind: (
                _parse_nodes(kind, data[kind]),
                _parse_ints(f"{kind}_concat", data[f"{kind}_concat"]),
            )
            for kind in kinds
        }
        return cls({k: c for k, c in cells.items() if c != ((), ())}, space=space)

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"genotype is not valid JSON: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Genotype:
        """Reads and validates a genotype.json, or a file holding one `Genotype(...)` as
        the papers' repositories print it."""
        path = Path(path)
        if not path.is_file():
            raise GenotypeError(f"genotype file {str(path)!r} does not exist")
        text = path.read_text()
        try:
            if not text.lstrip().startswith("{") and "Genotype(" in text:
                return cls.from_python(text)
            return cls.from_json(text).validate()
        except GenotypeError as e:
            raise GenotypeError(f"{path}: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Writes the genotype as JSON, atomically."""
        atomic_write_json(path, self.to_dict())


def _literal(name: str | None, node: ast.expr) -> Any:
    """A keyword's value: a Python literal, or `range(...)` of integer literals."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "range":
        try:
            return range(*(ast.literal_eval(a) for a in node.args))
        except (ValueError, TypeError):
            pass
    else:
        try:
            return ast.literal_eval(node)
        except (ValueError, SyntaxError):
            pass
    raise GenotypeError(
        f"genotype text: {name}= must be a literal list of (op, input) pairs or indices "
        f"(or range(a, b)), got {ast.unparse(node)!r}"
    )


def _cells_from_keywords(
    fields: dict[str, Any], space: str | None
) -> tuple[dict[str, CellGenotype], str]:
    """The cells and space of the keyword form (`normal=..., normal_concat=...`)."""
    kinds = [k for k in fields if k != "concat" and not k.endswith("_concat")]
    if not kinds:
        raise GenotypeError(
            f"genotype keywords {sorted(fields)} name no cell; give each cell kind as "
            "<kind>=[(op, input), ...] with <kind>_concat=[...]"
        )
    orphans = [
        k for k in fields if k.endswith("_concat") and k.removesuffix("_concat") not in kinds
    ]
    if orphans:
        raise GenotypeError(f"genotype keyword {orphans[0]!r} has no cell {orphans[0][:-7]!r}")
    if "concat" in fields and (len(kinds) != 1 or f"{kinds[0]}_concat" in fields):
        raise GenotypeError(
            "genotype keyword 'concat' names the output of a one-cell genotype; with "
            f"cells {', '.join(kinds)} give each its own <kind>_concat"
        )
    target = _keyword_space(kinds, space)
    cells = {}
    for kind in kinds:
        concat = fields.get(f"{kind}_concat", fields.get("concat"))
        if concat is None:
            raise GenotypeError(f"genotype cell {kind!r} needs {kind}_concat=[...] (its output)")
        cells[kind] = (_keyword_nodes(kind, fields[kind], target), _keyword_ints(kind, concat))
    return cells, target.name


def _keyword_space(kinds: list[str], space: str | None) -> SearchSpace:
    """`space` if named, else the first registered space whose cell kinds are `kinds`."""
    if space is not None:
        try:
            return get_space(space)
        except (KeyError, ValueError) as e:
            raise GenotypeError(f"genotype: {e.args[0]}") from None
    for name in SPACES:
        if set(SPACES.get(name).cell_kinds) == set(kinds):
            return SPACES.get(name)
    known = "; ".join(f"{n}: {', '.join(SPACES.get(n).cell_kinds)}" for n in SPACES)
    raise GenotypeError(
        f"no search space has exactly the cells {', '.join(kinds)}; spaces and their cells: {known}"
    )


def _is_pair(item: Any) -> bool:
    return (
        isinstance(item, (tuple, list))
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], int)
        and not isinstance(item[1], bool)
    )


def _keyword_nodes(kind: str, value: Any, space: SearchSpace) -> tuple[Node, ...]:
    """A cell's nodes from a flat list of (op, input) pairs, grouped as `space` keeps
    them per node, or from a list of nodes."""
    if not isinstance(value, (list, tuple)) or not value:
        raise GenotypeError(f"genotype.{kind} must be a non-empty list of (op, input) pairs")
    if all(_is_pair(item) for item in value):
        nodes, start = [], 0
        while start < len(value):
            size = space.edges_per_node or space.n_inputs + len(nodes)
            if start + size > len(value):
                raise GenotypeError(
                    f"genotype.{kind} has {len(value)} (op, input) pairs; space {space.name!r} "
                    f"takes them {space.edges_per_node or 'one per earlier node'} per node, "
                    f"which leaves {len(value) - start} for node {len(nodes)}"
                )
            nodes.append(tuple((op, src) for op, src in value[start : start + size]))
            start += size
        return tuple(nodes)
    for n, node in enumerate(value):
        if not isinstance(node, (list, tuple)) or not all(_is_pair(p) for p in node):
            raise GenotypeError(
                f"genotype.{kind}[{n}] is {node!r}; give (op_name, input_index) pairs, as a "
                "flat list or one list per node"
            )
    return tuple(tuple((op, src) for op, src in node) for node in value)


def _keyword_ints(kind: str, value: Any) -> tuple[int, ...]:
    try:
        items = list(value)
    except TypeError:
        items = None
    if items is None or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise GenotypeError(f"genotype {kind}'s concat must list node indices, got {value!r}")
    return tuple(items)


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
            if not _is_pair(pair):
                raise GenotypeError(
                    f"genotype.{field}[{n}]: each edge must be [op_name, input_index], got {pair!r}"
                )
            pairs.append((pair[0], pair[1]))
        nodes.append(tuple(pairs))
    return tuple(nodes)


def _parse_arch_node(n: int, part: str) -> Node:
    """One ``|op~input|op~input|`` node of an arch string."""
    if len(part) < 2 or not part.startswith("|") or not part.endswith("|"):
        raise GenotypeError(
            f"arch string node {n} is {part!r}; each node looks like |op~input|op~input| and "
            "nodes are joined by '+', e.g. |nor_conv_3x3~0|+|skip_connect~0|none~1|"
        )
    edges = []
    for item in part[1:-1].split("|"):
        op, sep, src = item.partition("~")
        if not sep or not op or not src.isdigit():
            raise GenotypeError(
                f"arch string node {n}: edge {item!r} must look like op~input (e.g. skip_connect~0)"
            )
        edges.append((op, int(src)))
    return tuple(edges)


def _check_cell(
    kind: str,
    nodes: tuple[Node, ...],
    concat: tuple[int, ...],
    space: SearchSpace,
    searched: bool,
) -> None:
    # A space that keeps every edge (NAS-Bench-201) defines its cells by the search's
    # structure; one that keeps a fixed number per node builds any such cell.
    strict = searched or space.edges_per_node is None
    if (strict and len(nodes) != space.n_nodes) or not nodes:
        raise GenotypeError(
            f"genotype.{kind} has {len(nodes)} nodes; space {space.name!r} has {space.n_nodes}"
        )
    if strict:
        allowed = [o for o in space.ops if space.derive_none or o != "none"]
        where = f"in space {space.name!r}"
    else:
        from nasax.supernet.skeletons import skeleton_of  # its networks import this module

        try:
            ops = skeleton_of(space).ops
        except KeyError as e:
            raise GenotypeError(f"space {space.name!r}: {e.args[0]}") from None
        allowed = [o for o in ops.names() if space.derive_none or o != "none"]
        where = f"an op cells of space {space.name!r} can hold"
    for n, node in enumerate(nodes):
        want = space.edges_per_node or space.n_inputs + n
        if len(node) != want:
            raise GenotypeError(
                f"genotype.{kind}[{n}] has {len(node)} edges; space {space.name!r} keeps {want}"
            )
        for op, src in node:
            if op not in allowed:
                raise GenotypeError(
                    f"genotype.{kind}[{n}]: op {op!r} is not {where}; allowed: {', '.join(allowed)}"
                )
            if not 0 <= src < space.n_inputs + n:
                raise GenotypeError(
                    f"genotype.{kind}[{n}]: input index {src} out of range; node {n} can read "
                    f"0..{space.n_inputs + n - 1}"
                )
        sources = sorted(src for _, src in node)
        if space.edges_per_node is None and sources != list(range(want)):
            raise GenotypeError(
                f"genotype.{kind}[{n}] reads inputs {sources}; space {space.name!r} keeps every "
                f"edge, so node {n} reads each of 0..{want - 1} once"
            )
    n_states = space.n_inputs + len(nodes)
    if space.cell_output == "last" and concat != (n_states - 1,):
        raise GenotypeError(
            f"genotype.{kind}_concat is {list(concat)}; cells of space {space.name!r} output "
            f"their last node, so it must be {[n_states - 1]}"
        )
    if not concat or any(not 0 <= i < n_states for i in concat) or len(set(concat)) != len(concat):
        raise GenotypeError(
            f"genotype.{kind}_concat {list(concat)} must list distinct node indices in "
            f"0..{n_states - 1}"
        )


def _nodes(*pairs: tuple[str, int]) -> tuple[Node, ...]:
    """Groups a DARTS-style flat list of (op, input) pairs two per node."""
    return tuple(tuple(pairs[i : i + 2]) for i in range(0, len(pairs), 2))


# Published cells of the DARTS paper (Liu et al., ICLR 2019): first and second order.
DARTS_V1 = Genotype.darts(
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
DARTS_V2 = Genotype.darts(
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
# NASNet-A (Zoph et al., CVPR 2018) and AmoebaNet-A (Real et al., AAAI 2019) as the DARTS
# reference lists them for its network: five nodes each, and ops beyond the DARTS search
# space (sep_conv_7x7, conv_7x1_1x7). Their cells concatenate only the nodes no other
# node reads.
NASNET = Genotype.darts(
    normal=_nodes(
        ("sep_conv_5x5", 1),
        ("sep_conv_3x3", 0),
        ("sep_conv_5x5", 0),
        ("sep_conv_3x3", 0),
        ("avg_pool_3x3", 1),
        ("skip_connect", 0),
        ("avg_pool_3x3", 0),
        ("avg_pool_3x3", 0),
        ("sep_conv_3x3", 1),
        ("skip_connect", 1),
    ),
    normal_concat=(2, 3, 4, 5, 6),
    reduce=_nodes(
        ("sep_conv_5x5", 1),
        ("sep_conv_7x7", 0),
        ("max_pool_3x3", 1),
        ("sep_conv_7x7", 0),
        ("avg_pool_3x3", 1),
        ("sep_conv_5x5", 0),
        ("skip_connect", 3),
        ("avg_pool_3x3", 2),
        ("sep_conv_3x3", 2),
        ("max_pool_3x3", 1),
    ),
    reduce_concat=(4, 5, 6),
)
AMOEBANET = Genotype.darts(
    normal=_nodes(
        ("avg_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("sep_conv_3x3", 0),
        ("sep_conv_5x5", 2),
        ("sep_conv_3x3", 0),
        ("avg_pool_3x3", 3),
        ("sep_conv_3x3", 1),
        ("skip_connect", 1),
        ("skip_connect", 0),
        ("avg_pool_3x3", 1),
    ),
    normal_concat=(4, 5, 6),
    reduce=_nodes(
        ("avg_pool_3x3", 0),
        ("sep_conv_3x3", 1),
        ("max_pool_3x3", 0),
        ("sep_conv_7x7", 2),
        ("sep_conv_7x7", 0),
        ("avg_pool_3x3", 1),
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("conv_7x1_1x7", 0),
        ("sep_conv_3x3", 5),
    ),
    reduce_concat=(3, 4, 6),
)
# NAS-Bench-201 cells (Dong & Yang, ICLR 2020): the ResNet of its space (two 3x3 convs
# and a skip, as in a basic block) and its largest network (a 3x3 conv on every edge).
NB201_RESNET = Genotype.from_arch_string(
    "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"
)
NB201_LARGEST = Genotype.from_arch_string(
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
)


# Recurrent cells searched on Penn Treebank. DARTS' first- and second-order cells average
# all 8 nodes (input 0 is the cell's first state); the ENAS cell (Pham et al., ICML 2018),
# as the DARTS reference lists it, has 11 nodes and averages the 6 no other node reads.
DARTS_RNN_V1 = Genotype(
    space="darts_rnn",
    recurrent=[
        ("relu", 0),
        ("relu", 1),
        ("tanh", 2),
        ("relu", 3),
        ("relu", 4),
        ("identity", 1),
        ("relu", 5),
        ("relu", 1),
    ],
    concat=range(1, 9),
)
DARTS_RNN_V2 = Genotype(
    space="darts_rnn",
    recurrent=[
        ("sigmoid", 0),
        ("relu", 1),
        ("relu", 1),
        ("identity", 1),
        ("tanh", 2),
        ("sigmoid", 5),
        ("tanh", 3),
        ("relu", 5),
    ],
    concat=range(1, 9),
)
ENAS_RNN = Genotype(
    space="enas_rnn",
    recurrent=[
        ("tanh", 0),
        ("tanh", 1),
        ("relu", 1),
        ("tanh", 3),
        ("tanh", 3),
        ("relu", 3),
        ("relu", 4),
        ("relu", 7),
        ("relu", 8),
        ("relu", 8),
        ("relu", 8),
    ],
    concat=[2, 5, 6, 9, 10, 11],
)
PUBLISHED = {
    "DARTS_V1": DARTS_V1,
    "DARTS_V2": DARTS_V2,
    "DARTS": DARTS_V2,
    "NASNET": NASNET,
    "NASNet": NASNET,
    "AMOEBANET": AMOEBANET,
    "AmoebaNet": AMOEBANET,
    "NB201_RESNET": NB201_RESNET,
    "NB201_LARGEST": NB201_LARGEST,
    "DARTS_RNN_V1": DARTS_RNN_V1,
    "DARTS_RNN_V2": DARTS_RNN_V2,
    "DARTS_RNN": DARTS_RNN_V2,
    "ENAS_RNN": ENAS_RNN,
}


def load_genotype(name_or_path: str | os.PathLike) -> Genotype:
    """A published genotype by name (`DARTS_V2`), a NAS-Bench-201 arch string
    (`|nor_conv_3x3~0|+|...|`), a `Genotype(...)` as the papers' repositories print it
    (text, or a file holding it), a genotype.json, or a run directory with one."""
    text = str(name_or_path)
    if text in PUBLISHED:
        return PUBLISHED[text]
    if text.lstrip().startswith("|"):
        return Genotype.from_arch_string(text)
    if "Genotype(" in text:
        return Genotype.from_python(text)
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "genotype.json"
        if not path.is_file():
            raise GenotypeError(f"{name_or_path} is a directory without a genotype.json")
    elif not path.exists():
        close = difflib.get_close_matches(text, list(PUBLISHED), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise GenotypeError(
            f"genotype {text!r} is neither a file, a NAS-Bench-201 arch string, nor a published "
            f"genotype{hint}; published: {', '.join(PUBLISHED)}"
        )
    return Genotype.load(path)
