"""Zero-cost proxies: scores of an untrained network from one minibatch, which rank cells.

Each proxy is a pure function `proxy(apply, params, batch, key) -> scalar`, where
`apply(params, images, train) -> logits` is the network of one cell with its weights as
an explicit pytree. Higher is better for every proxy. A new proxy is one function
registered by name (`register_proxy`).

The sums over "weights" run over the parameters of two or more dimensions: the kernels
of convolutions and linear layers, as the papers' per-layer sums do (not BatchNorm's
scale and bias, nor biases).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nasax.core.registry import Registry
from nasax.engine.marking import forward_differentiable

Apply = Callable[[Any, jax.Array, bool], jax.Array]
"""apply(params, images, train) -> logits of one cell's network (train: BN on the batch)."""

ProxyFn = Callable[[Apply, Any, Mapping[str, jax.Array], jax.Array], jax.Array]


@dataclass(frozen=True)
class Proxy:
    """A registered proxy.

    Attributes:
        fn: the score, or None for a proxy read off the cell's cost table.
        x64: computed in float64 (where the backend has it), as the paper needs.
        table: the cost metric a table proxy reads ("params", "flops").
        paper: where the definition comes from.
    """

    fn: ProxyFn | None
    x64: bool = False
    table: str | None = None
    paper: str = ""


PROXIES: Registry[Proxy] = Registry("proxy")


def register_proxy(
    name: str, *, x64: bool = False, paper: str = ""
) -> Callable[[ProxyFn], ProxyFn]:
    """Decorator: registers a proxy function under `name`."""

    def add(fn: ProxyFn) -> ProxyFn:
        PROXIES.register(name, Proxy(fn, x64=x64, paper=paper))
        return fn

    return add


PROXIES.register("params", Proxy(None, table="params", paper="White et al. 2022 (baseline)"))
PROXIES.register("flops", Proxy(None, table="flops", paper="White et al. 2022 (baseline)"))


def weight_mask(params: Any) -> Any:
    """True on the leaves the proxies sum over: parameters of two or more dimensions."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def _weights_sum(fn: Callable[..., jax.Array], *trees: Any) -> jax.Array:
    """Σ over the weight leaves of `fn(*leaves)` summed over each leaf."""
    mask = jax.tree.leaves(weight_mask(trees[0]))
    leaves = [jax.tree.leaves(t) for t in trees]
    total = jnp.zeros((), jnp.result_type(*leaves[0]))
    for k, keep in enumerate(mask):
        if keep:
            total = total + jnp.sum(fn(*(ls[k] for ls in leaves)))
    return total


def cross_entropy(apply: Apply, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
    """The batch's mean cross-entropy, BN on the batch's statistics (training mode)."""
    logits = apply(params, batch["image"], True)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]))


@register_proxy("synflow", x64=True, paper="Tanaka et al. 2020; Abdelfattah et al. 2021")
def synflow(apply: Apply, params: Any, batch: Mapping[str, jax.Array], key: jax.Array) -> jax.Array:
    """Σ θ ∂R/∂θ over the weights, with every parameter replaced by its absolute value
    and R the sum of the outputs for one all-ones image: data-free synaptic flow.

    Departs from the paper in one way: the paper scores a copy without BatchNorm; here
    BN runs in evaluation mode at its initial statistics, an identity up to a factor
    1/sqrt(1 + 1e-5) per layer, the same for every cell of a depth.
    """
    ones = jnp.ones((1, *batch["image"].shape[1:]), jnp.result_type(*jax.tree.leaves(params)))
    signs = jax.tree.map(jnp.abs, params)

    def flow(p: Any) -> jax.Array:
        return jnp.sum(apply(p, ones, False))

    grads = jax.grad(flow)(signs)
    return _weights_sum(lambda p, g: p * g, signs, grads)


@register_proxy("grad_norm", paper="Abdelfattah et al. 2021")
def grad_norm(
    apply: Apply, params: Any, batch: Mapping[str, jax.Array], key: jax.Array
) -> jax.Array:
    """Σ over layers of the L2 norm of the loss gradient of each weight."""
    grads = jax.grad(lambda p: cross_entropy(apply, p, batch))(params)
    return _weights_sum(lambda g: jnp.sqrt(jnp.sum(jnp.square(g))), grads)


@register_proxy("snip", paper="Lee et al. 2019; Abdelfattah et al. 2021")
def snip(apply: Apply, params: Any, batch: Mapping[str, jax.Array], key: jax.Array) -> jax.Array:
    """Σ |θ ∂L/∂θ| over the weights: the loss's sensitivity to removing each weight."""
    grads = jax.grad(lambda p: cross_entropy(apply, p, batch))(params)
    return _weights_sum(lambda p, g: jnp.abs(p * g), params, grads)


@register_proxy("grasp", paper="Wang et al. 2020; Abdelfattah et al. 2021")
def grasp(apply: Apply, params: Any, batch: Mapping[str, jax.Array], key: jax.Array) -> jax.Array:
    """-Σ θ (H g) over the weights, g the loss gradient and H the loss Hessian (one pass,
    temperature 1, as Abdelfattah et al. use it). H g is forward over reverse mode."""

    def loss_grad(p: Any) -> Any:
        return jax.grad(lambda q: cross_entropy(apply, q, batch))(p)

    g = jax.lax.stop_gradient(loss_grad(params))
    mask = weight_mask(params)
    g = jax.tree.map(lambda v, m: v if m else jnp.zeros_like(v), g, mask)
    _, hg = jax.jvp(forward_differentiable(loss_grad), (params,), (g,))
    return -_weights_sum(lambda p, h: p * h, params, hg)


@register_proxy("jacob_cov", paper="Mellor et al. 2021 (v1); Abdelfattah et al. 2021")
def jacob_cov(
    apply: Apply, params: Any, batch: Mapping[str, jax.Array], key: jax.Array
) -> jax.Array:
    """-Σ (log(v + k) + 1/(v + k)), k = 1e-5, over the eigenvalues v of the correlation
    matrix of the images' input Jacobians (the gradient of the summed logits with
    respect to each image, BN on the batch): high when images' Jacobians are decorrelated."""
    images = batch["image"]
    jac = jax.grad(lambda x: jnp.sum(apply(params, x, True)))(images)
    jac = jac.reshape(images.shape[0], -1).astype(jnp.float32)
    centred = jac - jnp.mean(jac, axis=1, keepdims=True)
    norms = jnp.sqrt(jnp.sum(jnp.square(centred), axis=1))
    unit = centred / jnp.maximum(norms, 1e-30)[:, None]
    corr = unit @ unit.T
    v = jnp.linalg.eigvalsh(corr)
    k = 1e-5
    return -jnp.sum(jnp.log(v + k) + 1.0 / (v + k))


def rank_vote(scores: Mapping[str, Sequence[float]], members: Sequence[str]) -> np.ndarray:
    """The mean rank (0 = lowest score) of each cell under `members`: Abdelfattah et al.'s
    vote of proxies as one score over a set of cells. NaN scores rank lowest."""
    ranks = []
    for name in members:
        values = np.asarray(scores[name], np.float64)
        values = np.where(np.isfinite(values), values, -np.inf)
        ranks.append(np.argsort(np.argsort(values, kind="stable"), kind="stable"))
    return np.mean(ranks, axis=0)


VOTE = ("synflow", "jacob_cov", "snip")
"""The members of the published vote (Abdelfattah et al. 2021: rho 0.82 on NB201)."""


def get_proxy(name: str) -> Proxy:
    """The registered proxy `name` (KeyError in one line naming the known ones)."""
    return PROXIES.get(name)


def proxy_names() -> list[str]:
    return PROXIES.names()
