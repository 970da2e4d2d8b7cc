"""Pricing a space's ops at the deployed size: parameters, FLOPs, bytes and latency.

Every distinct op block (an op at one edge signature: channels, stride, input size) is
priced once. Parameters come from shapes; FLOPs and bytes accessed from XLA's
`cost_analysis()` of the block's inference program at batch 1 (per image, as papers
report them); latency from timing the compiled block on this device, at batch 1 and at
the batch sizes asked for. The fixed part of each metric is the whole network's figure
less its edges', for a reference cell; latency's is calibrated on a few whole networks
(`calibrate`), since a network runs its blocks fused in one program.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nasax.core.errors import ConfigError
from nasax.core.io import atomic_write_json
from nasax.engine.plan_cache import code_key, store_dir
from nasax.search.costs import CostTable, live_edges
from nasax.supernet.cells import FixedEdge
from nasax.supernet.genotypes import Genotype
from nasax.supernet.network import Site
from nasax.supernet.ops import OPS
from nasax.supernet.skeletons import skeleton_of
from nasax.supernet.spaces import SearchSpace, get_space

FORMAT = 1
"""The table file's layout version."""


class Deploy(NamedTuple):
    """The network a cost is priced at: the space's skeleton at this size."""

    channels: int
    layers: int
    image_size: tuple[int, int]
    in_channels: int
    num_classes: int

    def to_json(self) -> dict[str, Any]:
        return {**self._asdict(), "image_size": list(self.image_size)}


def edge_sites(space: SearchSpace, deploy: Deploy) -> list[Site]:
    """The edges of the deployed network of `space`."""
    network = skeleton_of(space).discrete_network
    return network.edge_sites(space, deploy.channels, deploy.layers, deploy.image_size)


def priced_ops(space: SearchSpace) -> list[int]:
    """Indices of the ops with a program (every op but `none`)."""
    return [k for k, op in enumerate(space.ops) if not OPS.get(op).zero]


def op_program(
    op: str, signature: tuple[int, int, int, int], copies: int = 1
) -> tuple[Callable, nnx.State]:
    """(forward(state, x), abstract state) of `copies` deployed edges (affine BNs) of the
    op at a signature, summed as a node sums its edges, in inference mode."""
    channels, stride, _, _ = signature
    edges = nnx.eval_shape(
        lambda: nnx.List([FixedEdge(op, channels, stride, nnx.Rngs(i)) for i in range(copies)])
    )
    graphdef, state = nnx.split(edges)

    def forward(state: nnx.State, x: jax.Array) -> jax.Array:
        merged = nnx.merge(graphdef, state)
        return sum(edge(x, None, False) for edge in merged)

    return forward, state


def network_program(genotype: Genotype, deploy: Deploy) -> tuple[Callable, nnx.State]:
    """(forward(state, x), abstract state) of a genotype's deployed network, inference."""
    build = skeleton_of(genotype.resolve_space()).discrete_network
    net = nnx.eval_shape(
        lambda: build(
            genotype,
            num_classes=deploy.num_classes,
            channels=deploy.channels,
            layers=deploy.layers,
            in_channels=deploy.in_channels,
            rngs=nnx.Rngs(0),
        )
    )
    graphdef, state = nnx.split(net)

    def forward(state: nnx.State, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(x, train=False)

    return forward, state


def _size(state: nnx.State) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.filter_state(state, nnx.Param)))


def _images(batch: int, size: tuple[int, int], channels: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch, *size, channels), jnp.float32)


def _analysis(forward: Callable, state: nnx.State, x: jax.ShapeDtypeStruct) -> dict[str, float]:
    """XLA's FLOPs and bytes accessed of `forward`'s program as lowered (no compile)."""
    cost = jax.jit(forward).lower(state, x).cost_analysis() or {}
    return {"flops": float(cost.get("flops", 0.0)), "bytes": float(cost.get("bytes accessed", 0))}


def _zeros(state: nnx.State) -> nnx.State:
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state)


def fastest_ms(run: Callable[[], Any], repeats: int, budget_s: float = 2.0) -> float:
    """The fastest wall time of `run()` in milliseconds (the least disturbed by other work
    on the machine), after two warm-up calls; fewer
    repeats (at least 3) when they would take longer than `budget_s`."""
    for _ in range(2):
        jax.block_until_ready(run())
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def measure_ms(forward: Callable, state: nnx.State, x: jax.ShapeDtypeStruct, repeats: int) -> float:
    """The latency of the compiled `forward` on zero weights and images (`fastest_ms`)."""
    compiled = jax.jit(forward).lower(state, x).compile()
    values, images = _zeros(state), jnp.zeros(x.shape, x.dtype)
    return fastest_ms(lambda: compiled(values, images), repeats)


def constant_ms(space: SearchSpace, deploy: Deploy, batch: int, repeats: int) -> float:
    """The latency of a network that computes a constant (every edge `none`, so XLA
    folds it), in spaces that can derive one; 0 elsewhere."""
    if not space.derive_none or "none" not in space.ops:
        return 0.0
    none = space.ops.index("none")
    paths = {kind: np.full(space.n_edges, none) for kind in space.cell_kinds}
    return network_ms(reference_genotype(space, paths), deploy, batch, repeats)


EDGE_COPIES = 4
"""Edges of one op summed in the program whose time, less one edge's, prices the op."""


def edge_ms(op: str, signature: tuple[int, int, int, int], batch: int, repeats: int) -> float:
    """What one more edge of `op` at a signature adds to a program's latency: the time of
    `EDGE_COPIES` such edges summed, less one's, per added edge. So launching the program
    and allocating its output are left out, and each edge pays for its add, as in a
    cell."""
    _, _, h, w = signature
    x = _images(batch, (h, w), signature[0])
    one = measure_ms(*op_program(op, signature, 1), x, repeats)
    many = measure_ms(*op_program(op, signature, EDGE_COPIES), x, repeats)
    return max(many - one, 0.0) / (EDGE_COPIES - 1)


@dataclass
class CostProfile:
    """Every table of a space at one deployed size, and where it was measured.

    Attributes:
        space: the space's name.
        deploy: the deployed size.
        tables: "params", "flops", "bytes", and "latency@B" for each batch size B timed.
        device: platform, device kind and count of the machine that timed latency.
        versions: of jax, jaxlib, flax and nasax.
        blocks: per op and signature, the raw figures (for the record).
    """

    space: str
    deploy: Deploy
    tables: dict[str, CostTable]
    device: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    blocks: list[dict[str, Any]] = field(default_factory=list)

    def table(self, metric: str, batch_size: int = 1) -> CostTable:
        """The table of `metric` ("latency" at `batch_size`)."""
        key = f"latency@{batch_size}" if metric == "latency" else metric
        if key not in self.tables:
            timed = sorted(int(k.split("@")[1]) for k in self.tables if k.startswith("latency@"))
            raise ConfigError(
                f"the cost table has no latency at batch {batch_size} (it has "
                f"{', '.join(map(str, timed)) or 'none'}); profile with --batch {batch_size}"
            )
        return self.tables[key]

    @property
    def batch_sizes(self) -> list[int]:
        return sorted(int(k.split("@")[1]) for k in self.tables if k.startswith("latency@"))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "space": self.space,
            "deploy": self.deploy.to_json(),
            "device": self.device,
            "versions": self.versions,
            "tables": {k: t.to_json() for k, t in self.tables.items()},
            "blocks": self.blocks,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CostProfile:
        if data.get("format") != FORMAT:
            raise ValueError(f"cost table format {data.get('format')!r}, expected {FORMAT}")
        d = data["deploy"]
        deploy = Deploy(**{**d, "image_size": tuple(d["image_size"])})
        tables = {k: CostTable.from_json(t) for k, t in data["tables"].items()}
        return cls(data["space"], deploy, tables, data["device"], data["versions"], data["blocks"])

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_json())


def load_profile(path: str | Path) -> CostProfile:
    """A table written by `nasax profile`; ConfigError in one line if it is not one."""
    try:
        return CostProfile.from_json(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise ConfigError(
            f"search.cost.table: {path} does not exist; write one with "
            "`nasax profile CONFIG --out TABLE.json`"
        ) from None
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"search.cost.table: {path} is not a nasax cost table ({e})") from None


def device_info() -> dict[str, Any]:
    devices = jax.devices()
    return {
        "platform": devices[0].platform,
        "kind": devices[0].device_kind,
        "count": len(devices),
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in ("jax", "jaxlib", "flax", "nasax"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def reference_genotype(space: SearchSpace, paths: dict[str, np.ndarray] | None = None) -> Genotype:
    """A cell of `space` from paths (op index per edge, `none` on dropped edges); by
    default each node's first kept edges with the first op that is not `none` (so every
    block of the network is live when its fixed part is measured)."""
    ops = [k for k, op in enumerate(space.ops) if op != "none"]
    cells = {}
    for kind in space.cell_kinds:
        nodes = []
        for node in range(space.n_nodes):
            ids = list(space.node_edges(node))
            if paths is None:
                chosen = [(e, ops[0]) for e in ids[: space.edges_per_node or len(ids)]]
            else:
                none = space.ops.index("none") if "none" in space.ops else -1
                keep = space.edges_per_node is not None
                chosen = [(e, int(paths[kind][e])) for e in ids]
                chosen = [(e, k) for e, k in chosen if not (keep and k == none)]
            nodes.append(tuple((space.ops[k], space.edges[e][1]) for e, k in chosen))
        cells[kind] = (tuple(nodes), space.concat)
    return Genotype(cells, space=space.name)


def _tables(
    space: SearchSpace, sites: Sequence[Site], prices: dict[tuple, dict[str, float]], metric: str
) -> dict[str, np.ndarray]:
    """Per kind, the (edges, ops) sums over that kind's cells of each op's price."""
    ops = {kind: np.zeros((space.n_edges, space.n_ops)) for kind in space.cell_kinds}
    for site in sites:
        for k in priced_ops(space):
            ops[site.kind][site.edge, k] += prices[(k, site.signature)][metric]
    return ops


def _fixed(
    total: float, genotype: Genotype, space: SearchSpace, ops: dict[str, np.ndarray], metric: str
) -> float:
    edges = CostTable(metric, 0.0, ops, space.name).of_genotype(genotype, space)
    return total - edges


def static_profile(space: SearchSpace, deploy: Deploy) -> CostProfile:
    """Parameters, FLOPs and bytes per image of `space` at `deploy` (no timing)."""
    sites = edge_sites(space, deploy)
    prices: dict[tuple, dict[str, float]] = {}
    blocks = []
    for signature in sorted({s.signature for s in sites}):
        c, _, h, w = signature
        for k in priced_ops(space):
            forward, state = op_program(space.ops[k], signature)
            figures = {"params": float(_size(state))}
            figures |= _analysis(forward, state, _images(1, (h, w), c))
            prices[(k, signature)] = figures
            blocks.append({"op": space.ops[k], "signature": list(signature), **figures})
    genotype = reference_genotype(space)
    forward, state = network_program(genotype, deploy)
    whole = {"params": float(_size(state))}
    whole |= _analysis(forward, state, _images(1, deploy.image_size, deploy.in_channels))
    tables = {}
    for metric in ("params", "flops", "bytes"):
        ops = _tables(space, sites, prices, metric)
        fixed = _fixed(whole[metric], genotype, space, ops, metric)
        tables[metric] = CostTable(metric, fixed, ops, space.name)
    return CostProfile(space.name, deploy, tables, blocks=blocks, versions=versions())


def calibration_cells(space: SearchSpace, flops: CostTable, n: int = 3) -> list[Genotype]:
    """Cells spanning the space's cost range: its cheapest and dearest in FLOPs, and
    random ones between (a fixed seed)."""
    _, cheap = flops.cheapest(space)
    dear_table = CostTable("flops", 0.0, {k: -v for k, v in flops.ops.items()}, space.name)
    _, dear = dear_table.cheapest(space)
    cells = [reference_genotype(space, cheap), reference_genotype(space, dear)]
    rng = np.random.default_rng(0xCA1)  # not the seeds benchmarks draw test cells with
    while len(cells) < n:
        cells.append(random_genotype(space, rng))
    return cells


def random_genotype(space: SearchSpace, rng: np.random.Generator) -> Genotype:
    """A uniformly random cell of `space` (kept edges, then an op for each)."""
    ops = [k for k, op in enumerate(space.ops) if op != "none" or space.derive_none]
    none = space.ops.index("none") if "none" in space.ops else 0
    paths = {}
    for kind in space.cell_kinds:
        path = np.full(space.n_edges, none)
        for node in range(space.n_nodes):
            ids = list(space.node_edges(node))
            keep = rng.permutation(ids)[: space.edges_per_node or len(ids)]
            for e in keep:
                path[e] = ops[int(rng.integers(len(ops)))]
        paths[kind] = path
    return reference_genotype(space, paths)


def network_ms(genotype: Genotype, deploy: Deploy, batch_size: int, repeats: int = 10) -> float:
    """The measured latency of a genotype's deployed network (inference, zero weights)."""
    forward, state = network_program(genotype, deploy)
    x = _images(batch_size, deploy.image_size, deploy.in_channels)
    return measure_ms(forward, state, x, repeats)


CALIBRATION_CELLS = 12
"""Whole networks timed to fit the latency table (`latency_profile`)."""


def latency_profile(
    profile: CostProfile,
    batch_sizes: Sequence[int],
    repeats: int = 10,
    calibration: int = CALIBRATION_CELLS,
) -> CostProfile:
    """`profile` with latency tables at each batch size, timed on this device.

    Each op is first priced alone at each signature (`edge_ms`). Those prices are the
    prior of a ridge fit to whole networks: `calibration` cells spanning the space's
    FLOPs are built at the deployed size and timed, and the table's fixed part and the
    price of each op on each class of interchangeable edges (`edge_groups`) are fitted
    to their latency. So what only a whole program shows (fusion across edges, the
    nodes' sums, launching it) lands in the prices.
    """
    space = get_space(profile.space)
    deploy = profile.deploy
    sites = edge_sites(space, deploy)
    cells = calibration_cells(space, profile.tables["flops"], calibration)
    groups = edge_groups(space, sites)
    tables = dict(profile.tables)
    blocks = list(profile.blocks)
    for batch in batch_sizes:
        prices: dict[tuple, dict[str, float]] = {}
        for signature in sorted({s.signature for s in sites}):
            for k in priced_ops(space):
                ms = edge_ms(space.ops[k], signature, batch, repeats)
                prices[(k, signature)] = {"latency": ms}
                blocks.append(
                    {"op": space.ops[k], "signature": list(signature), "batch": batch, "ms": ms}
                )
        prior = _tables(space, sites, prices, "latency")
        measured = np.array([network_ms(g, deploy, batch, repeats) for g in cells])
        table = _fit_table(space, groups, prior, cells, measured)
        constant = constant_ms(space, deploy, batch, repeats)
        tables[f"latency@{batch}"] = dataclasses.replace(table, constant=constant)
    return CostProfile(profile.space, deploy, tables, device_info(), profile.versions, blocks)


def edge_groups(space: SearchSpace, sites: Sequence[Site]) -> dict[str, np.ndarray]:
    """Per cell kind, a group number per edge: edges whose sites have the same signatures
    in every cell of the kind cost the same, so a fit prices them together."""
    signatures: dict[tuple[str, int], list] = {}
    for site in sites:
        signatures.setdefault((site.kind, site.edge), []).append(site.signature)
    numbers: dict[tuple, int] = {}
    groups = {}
    for kind in space.cell_kinds:
        keys = [(kind, tuple(signatures[(kind, e)])) for e in range(space.n_edges)]
        groups[kind] = np.array([numbers.setdefault(key, len(numbers)) for key in keys])
    return groups


def _features(
    genotype: Genotype, space: SearchSpace, groups: dict[str, np.ndarray], n_groups: int
) -> np.ndarray:
    """How many used edges of each (edge group, op) the genotype's network has."""
    x = np.zeros((n_groups, space.n_ops))
    for kind in space.cell_kinds:
        nodes = genotype.cell(kind)[0]
        for node, src in live_edges(nodes, space):
            op = next(op for op, s in nodes[node] if s == src)
            x[groups[kind][space.node_edges(node)[src]], space.ops.index(op)] += 1
    return x


FITS = ("affine", 0.1, 1.0, 10.0)
"""The latency models `_fit_table` chooses from: the lone prices scaled and offset, or a
ridge fit of every price toward them with these strengths."""


def _solve(x: np.ndarray, y: np.ndarray, p0: np.ndarray, fit: str | float) -> np.ndarray:
    """(fixed, prices...) of one model (`FITS`) on features `x` and latencies `y`."""
    if fit == "affine":
        (scale, fixed), *_ = np.linalg.lstsq(np.stack([x @ p0, np.ones(len(y))], 1), y, None)
        return np.concatenate([[fixed], max(scale, 0.0) * p0])
    weight = np.sqrt(float(fit) * max(float(np.mean(x**2)), 1e-12))
    design = np.vstack(
        [
            np.hstack([np.ones((len(y), 1)), x]),
            np.hstack([np.zeros((len(p0), 1)), weight * np.eye(len(p0))]),
        ]
    )
    solution, *_ = np.linalg.lstsq(design, np.concatenate([y, weight * p0]), rcond=None)
    return np.concatenate([solution[:1], np.maximum(solution[1:], 0.0)])


def _fit_table(
    space: SearchSpace,
    groups: dict[str, np.ndarray],
    prior: dict[str, np.ndarray],
    cells: Sequence[Genotype],
    measured: np.ndarray,
) -> CostTable:
    """The latency table fitted to whole networks: measured ~ fixed + the prices of
    their computing (edge group, op) pairs. Of the models in `FITS`, the one with the
    least leave-one-out relative error over the networks is fitted to all of them, and
    its prices are clipped at 0."""
    n_groups = 1 + max(int(g.max()) for g in groups.values())
    p0 = np.zeros((n_groups, space.n_ops))
    for kind in space.cell_kinds:
        for e, g in enumerate(groups[kind]):
            p0[g] = prior[kind][e]
    columns = tuple(zip(*[(g, k) for g in range(n_groups) for k in priced_ops(space)]))
    x = np.array([_features(c, space, groups, n_groups)[columns] for c in cells])
    y, prior_prices = np.asarray(measured), p0[columns]

    def loo_error(fit: str | float) -> float:
        errors = []
        for i in range(len(y)):
            rest = np.arange(len(y)) != i
            solution = _solve(x[rest], y[rest], prior_prices, fit)
            errors.append(abs(solution[0] + x[i] @ solution[1:] - y[i]) / y[i])
        return float(np.mean(errors))

    best = min(FITS, key=loo_error)
    solution = _solve(x, y, prior_prices, best)
    prices = np.zeros((n_groups, space.n_ops))
    # No op makes a network faster; a negative price is the fit's noise, and at 0 an edge
    # that does not compute (of_genotype) never costs more than its price (of_paths).
    prices[columns] = np.maximum(solution[1:], 0.0)
    ops = {kind: prices[groups[kind]] for kind in space.cell_kinds}
    return CostTable("latency", float(solution[0]), ops, space.name)


def profile_space(
    space: SearchSpace | str,
    deploy: Deploy,
    batch_sizes: Sequence[int] = (1,),
    *,
    repeats: int = 10,
    cache: bool = True,
) -> CostProfile:
    """Every table of `space` at `deploy`, latency at each batch size on this device;
    kept beside the stored plans (with JAX's on-disk cache) and read from there again."""
    space = get_space(space) if isinstance(space, str) else space
    path = _cache_path(space, deploy, batch_sizes) if cache else None
    if path is not None and path.exists():
        try:
            return CostProfile.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            pass
    profile = static_profile(space, deploy)
    if batch_sizes:
        profile = latency_profile(profile, batch_sizes, repeats)
    if path is not None:
        profile.save(path)
    return profile


def _cache_path(space: SearchSpace, deploy: Deploy, batch_sizes: Sequence[int]) -> Path | None:
    folder = store_dir()
    if folder is None:
        return None
    code = code_key()
    if code is None:
        return None
    key = repr((FORMAT, code, space, deploy, sorted(batch_sizes)))
    return folder.parent / "nasax-costs" / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.json"
