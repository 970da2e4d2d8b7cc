"""Scoring cells with zero-cost proxies: one compiled program per proxy for every cell.

The cell is an input of the program (one op index per edge, a `lax.switch` per edge on
the supernet), so the 15,625 cells of NAS-Bench-201, or any sample of a larger space,
compile once per proxy and chunk size. Every cell is scored with the same initial
weights (the supernet's, from one key) and the same proxy key (Zen's Gaussian weights
and images): the cells differ only in their ops, which makes the comparison between
them less noisy than a fresh draw per cell.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nasax.core.errors import ConfigError, RunDirError
from nasax.loop.data import Dataset, make_preprocess
from nasax.search.costs import CostTable
from nasax.search.profiling import Deploy, random_genotype, reference_genotype, static_profile
from nasax.search.proxies import VOTE, Apply, get_proxy, rank_vote
from nasax.search.single_path import genotype_paths
from nasax.search.strategy import split_supernet
from nasax.supernet.genotypes import Genotype
from nasax.supernet.skeletons import skeleton_of
from nasax.supernet.spaces import SearchSpace

Paths = dict[str, jax.Array]


@dataclass(frozen=True)
class ScoringNetwork:
    """A space's supernet at the size cells are scored at, with its initial weights.

    Attributes:
        space: the search space.
        graphdef, arch, params, stats: the supernet, split (`split_supernet`).
        deploy: its size, where the table proxies (params, FLOPs) price cells; None
            for a strategy's supernet, which ranks by the network proxies only.
    """

    space: SearchSpace
    graphdef: nnx.GraphDef
    arch: nnx.State
    params: nnx.State
    stats: nnx.State
    deploy: Deploy | None = None

    def table(self, metric: str) -> CostTable:
        """The cost table of `metric` for cells at this size (built on first use)."""
        if self.deploy is None:
            raise ValueError(f"the {metric} proxy needs the network's size (deploy)")
        return _static_table(self.space, self.deploy, metric)


@functools.cache
def _static_table(space: SearchSpace, deploy: Deploy, metric: str) -> CostTable:
    return static_profile(space, deploy).table(metric)


def scoring_network(
    space: SearchSpace,
    *,
    channels: int,
    layers: int,
    image_shape: tuple[int, int, int],
    num_classes: int,
    key: jax.Array,
    stem_multiplier: int = 3,
) -> ScoringNetwork:
    """The supernet of `space` at this size, initialised from `key`."""
    model = skeleton_of(space).search_network(
        space,
        channels=channels,
        layers=layers,
        num_classes=num_classes,
        in_channels=image_shape[-1],
        stem_multiplier=stem_multiplier,
        rngs=nnx.Rngs(params=key),
    )
    graphdef, arch, params, stats = split_supernet(model)
    deploy = Deploy(channels, layers, tuple(image_shape[:2]), image_shape[-1], num_classes)
    return ScoringNetwork(space, graphdef, arch, params, stats, deploy)


def cell_apply(net: ScoringNetwork, paths: Paths) -> Apply:
    """apply(params, images, train) -> logits of the cell `paths` on the supernet."""
    return _cell_apply(net.graphdef, net.arch, net.stats, paths)


def _cell_apply(graphdef: nnx.GraphDef, arch: Any, stats: Any, paths: Paths) -> Apply:
    def apply(params: Any, images: jax.Array, train: bool) -> jax.Array:
        model = nnx.merge(graphdef, arch, params, stats, copy=True)
        return model(images, train=train, paths=paths)

    return apply


@functools.partial(jax.jit, static_argnums=(0, 1))
def _proxy_scores(
    graphdef: nnx.GraphDef,
    name: str,
    arch: Any,
    params: Any,
    stats: Any,
    cells: Paths,
    batch: dict[str, jax.Array],
    key: jax.Array,
) -> jax.Array:
    """Each stacked cell's score under proxy `name`, one cell at a time (`lax.map`), all
    with the same weights and key. One compile per supernet structure, proxy and chunk
    shape: the weights are arguments, so a new initialisation reuses it."""
    fn = get_proxy(name).fn

    def one(paths: Paths) -> jax.Array:
        return fn(_cell_apply(graphdef, arch, stats, paths), params, batch, key)

    return jax.lax.map(one, cells)


def proxy_program(
    net: ScoringNetwork, name: str
) -> Callable[[Paths, dict[str, jax.Array], jax.Array], np.ndarray]:
    """score(stacked paths, batch, key) -> each cell's score under proxy `name`, as a
    float64 host array. Float64 proxies run with JAX's 64-bit mode on for their trace
    and their call."""
    proxy = get_proxy(name)
    if proxy.table is not None:
        table = net.table(proxy.table)
        return lambda cells, batch, key: np.asarray(jax.vmap(table.of_paths)(cells), np.float64)

    def run(cells: Paths, batch: dict[str, jax.Array], key: jax.Array) -> np.ndarray:
        with jax.enable_x64(proxy.x64):
            params, images = net.params, batch["image"]
            if proxy.x64:
                params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)
                images = jnp.asarray(images, jnp.float64)
            batch = {**batch, "image": images}
            out = _proxy_scores(net.graphdef, name, net.arch, params, net.stats, cells, batch, key)
            return np.asarray(out, np.float64)

    return run


def stack_cells(genotypes: Sequence[Genotype], space: SearchSpace) -> Paths:
    """The cells as stacked paths (cell kind -> (cells, edges) op indices)."""
    paths = [genotype_paths(g, space) for g in genotypes]
    return {k: jnp.asarray(np.stack([p[k] for p in paths])) for k in space.cell_kinds}


def score_batch(dataset: Dataset, batch_size: int, seed: int) -> dict[str, jax.Array]:
    """The minibatch proxies read: `batch_size` training images drawn with `seed`,
    normalised as the search normalises them (no augmentation)."""
    if batch_size > len(dataset.x_train):
        raise ConfigError(
            f"--batch {batch_size} is more than the {len(dataset.x_train)} training images "
            f"of {dataset.name}; give a smaller batch"
        )
    pick = np.random.default_rng(seed).permutation(len(dataset.x_train))[:batch_size]
    preprocess = make_preprocess(dataset.mean, dataset.std)
    images = preprocess(jnp.asarray(dataset.x_train[pick]), jax.random.PRNGKey(0), False)
    return {"image": images, "label": jnp.asarray(dataset.y_train[pick], jnp.int32)}


def space_size(space: SearchSpace) -> int | None:
    """How many distinct cells the space has, where every edge is kept (NAS-Bench-201's
    5^6 = 15,625); None for spaces too large to list."""
    if space.edges_per_node is not None or len(space.cell_kinds) != 1:
        return None
    return len(space.ops) ** space.n_edges


def sample_cells(space: SearchSpace, n: int, seed: int) -> list[Genotype]:
    """`n` distinct uniformly random cells drawn with `seed`; every cell, in a fixed order,
    where `n` reaches the size of a listable space."""
    size = space_size(space)
    if size is not None and n >= size:
        order = np.indices((len(space.ops),) * space.n_edges).reshape(space.n_edges, -1).T
        kind = space.cell_kinds[0]
        return [reference_genotype(space, {kind: row}) for row in order]
    rng = np.random.default_rng(seed)
    cells, seen = [], set()
    while len(cells) < n:
        genotype = random_genotype(space, rng)
        text = cell_text(genotype)
        if text not in seen:
            seen.add(text)
            cells.append(genotype)
    return cells


def cell_text(genotype: Genotype) -> str:
    """A cell as one line: NAS-Bench-201's string where the space keeps every edge of
    one cell (as NAS-Bench-201 does), else the genotype's compact JSON."""
    if space_size(genotype.resolve_space()) is not None:
        return genotype.to_arch_string()
    return json.dumps(genotype.to_dict(), separators=(",", ":"))


def read_cells(path: Path, space: SearchSpace) -> list[Genotype]:
    """One cell per line of `path` (a NAS-Bench-201 string or a genotype's JSON), each
    checked against `space`; blank lines and `#` comments are skipped."""
    cells = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"--cells {path}: cannot read it ({e.strerror})") from None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            if text.startswith("{"):
                genotype = Genotype.from_json(text)
            else:
                genotype = Genotype.from_arch_string(text, space.name)
            genotype.validate(space, searched=True)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"--cells {path}, line {number}: {e}") from None
        cells.append(genotype)
    if not cells:
        raise ConfigError(f"--cells {path} holds no cell; give one per line")
    return cells


def _done_lines(out: Path, cells: Sequence[Genotype], proxies: Sequence[str]) -> int:
    """How many cells `out` already scored (dropping a torn last line a kill left);
    refuses a file that holds another scoring."""
    if not out.exists():
        return 0
    data = out.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with open(out, "r+b") as f:
            f.truncate(len(whole))
    rows = [json.loads(line) for line in whole.decode().splitlines()]
    for k, row in enumerate(rows):
        if k >= len(cells) or row.get("genotype") != cell_text(cells[k]):
            raise RunDirError(
                f"{out} holds another scoring (line {k + 1} is not this run's cell "
                f"{k + 1}); give another --out or delete it"
            )
        missing = [p for p in proxies if p not in row]
        if missing:
            raise RunDirError(
                f"{out} was scored without {missing[0]!r}; give the same --proxy or another --out"
            )
    return len(rows)


def _chunk_scores(
    programs: dict[str, Callable[[Paths, dict[str, jax.Array], jax.Array], np.ndarray]],
    part: Paths,
    chunk: int,
    batch: dict[str, jax.Array],
    key: jax.Array,
) -> dict[str, np.ndarray]:
    """Each proxy's scores of up to `chunk` stacked cells, padded with the last cell to
    `chunk` so every call has one shape (one compile)."""
    n = jax.tree.leaves(part)[0].shape[0]
    idx = np.minimum(np.arange(chunk), n - 1)
    padded = {k: v[idx] for k, v in part.items()}
    return {name: program(padded, batch, key)[:n] for name, program in programs.items()}


def score_cells(
    net: ScoringNetwork,
    cells: Sequence[Genotype],
    proxies: Sequence[str],
    batch: dict[str, jax.Array],
    key: jax.Array,
    out: Path,
    *,
    chunk: int = 16,
    report: Callable[[int, int, float], None] | None = None,
) -> int:
    """Scores `cells` under every proxy and appends one JSON line per cell to `out`:
    ``{"genotype": ..., "<proxy>": score, ...}`` (null where a score is not finite).

    Resumable: the cells `out` already holds are skipped, and a torn last line from a
    kill is dropped. Each chunk's lines go out in one write, flushed to disk, so a line
    is either whole or cut off at the end. Returns the number of cells scored now.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = _done_lines(out, cells, proxies)
    programs = {name: proxy_program(net, name) for name in proxies}
    tick, scored = time.perf_counter(), 0
    for begin in range(start, len(cells), chunk):
        part = list(cells[begin : begin + chunk])
        stacked = stack_cells(part, net.space)
        figures = _chunk_scores(programs, stacked, chunk, batch, key)
        lines = []
        for k, genotype in enumerate(part):
            row: dict[str, Any] = {"genotype": cell_text(genotype)}
            for name in proxies:
                value = float(figures[name][k])
                row[name] = value if np.isfinite(value) else None
            lines.append(json.dumps(row) + "\n")
        with open(out, "a") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
        scored += len(part)
        if report is not None:
            report(begin + len(part), len(cells), scored / (time.perf_counter() - tick))
    return scored


def cell_scores(
    net: ScoringNetwork,
    cells: Paths,
    batch: dict[str, jax.Array],
    key: jax.Array,
    proxy: str,
    chunk: int = 16,
) -> np.ndarray:
    """Each stacked cell's score under `proxy`, or under `vote` its mean rank by the
    published vote's members (higher is better either way); chunks of `chunk` cells
    share one compiled program."""
    names = list(VOTE) if proxy == "vote" else [proxy]
    programs = {name: proxy_program(net, name) for name in names}
    n = jax.tree.leaves(cells)[0].shape[0]
    parts = [
        _chunk_scores(
            programs,
            {k: v[begin : begin + chunk] for k, v in cells.items()},
            chunk,
            batch,
            key,
        )
        for begin in range(0, n, chunk)
    ]
    columns = {name: np.concatenate([p[name] for p in parts]) for name in names}
    if proxy == "vote":
        return rank_vote(columns, names)
    values = columns[proxy]
    return np.where(np.isfinite(values), values, -np.inf)


def read_scores(path: Path) -> list[dict[str, Any]]:
    """The rows of a scoring's JSON lines (whole lines only)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def proxy_list(text: str | Iterable[str]) -> list[str]:
    """Proxy names from a comma-separated list, each checked (one-line error)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    for name in names:
        try:
            get_proxy(name)
        except KeyError as e:
            raise ConfigError(f"--proxy: {e.args[0]}") from None
    if not names:
        raise ConfigError("--proxy: name at least one proxy")
    return list(dict.fromkeys(names))
