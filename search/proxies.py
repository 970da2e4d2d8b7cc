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
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nasax.core.registry import Registry
from nasax.engine.marking import forward_differentiable
from nasax.engine.taps import Totals, tapped

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


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fisher_probe(x: jax.Array, probe: jax.Array, fan_in: int) -> jax.Array:
    """The identity on `x`; its backward pass gives `probe` the layer's Fisher term."""
    return x


def _fisher_probe_fwd(x: jax.Array, probe: jax.Array, fan_in: int) -> tuple[jax.Array, tuple]:
    return x, (x, probe)


def _fisher_probe_bwd(fan_in: int, res: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, probe = res
    per_channel = jnp.sum(x * g, axis=tuple(range(1, x.ndim - 1)))  # (images, channels)
    term = 0.5 * fan_in * jnp.sum(jnp.mean(jnp.square(per_channel), axis=0))
    return g, term.astype(probe.dtype)


_fisher_probe.defvjp(_fisher_probe_fwd, _fisher_probe_bwd)


@dataclass(frozen=True)
class _FisherTap:
    """Every conv and linear output through `_fisher_probe` (the trace's input "probe")."""

    def zeros(self) -> Totals:
        return {}

    def report(self, site: str, x: jax.Array, inputs: Mapping[str, jax.Array], fan_in: int):
        if site in ("conv", "linear"):
            return _fisher_probe(x, inputs["probe"], fan_in), {}
        return x, {}


@register_proxy("fisher", paper="Turner et al. 2020; Abdelfattah et al. 2021")
def fisher(apply: Apply, params: Any, batch: Mapping[str, jax.Array], key: jax.Array) -> jax.Array:
    """Σ over the output channels of every conv and linear layer of ½ mean over images of
    (Σ over positions a ∂L/∂a)², a the channel's output: the Fisher information of
    removing the channel (Turner et al.). As Abdelfattah et al. score it, each weight
    takes its channel's value and the weights are summed, so a channel counts its
    layer's fan-in times; BN on the batch."""
    dtype = jnp.result_type(*jax.tree.leaves(params))

    def loss(probe: jax.Array) -> jax.Array:
        run = tapped(_FisherTap(), apply, {"probe": probe})
        logits, _ = run(params, batch["image"], True)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]))

    return jax.grad(loss)(jnp.zeros((), dtype))


@dataclass(frozen=True)
class _CodesTap:
    """NASWOT's kernel: per ReLU, the images' binary codes c (input > 0) add
    c cᵀ + (1 - c)(1 - c)ᵀ, the units on which two images agree."""

    images: int

    def zeros(self) -> Totals:
        return {"kernel": jnp.zeros((self.images, self.images), jnp.float32)}

    def report(self, site: str, x: jax.Array, inputs: Mapping[str, jax.Array], fan_in: int):
        if site != "relu":
            return x, {}
        codes = (x > 0).reshape(x.shape[0], -1).astype(jnp.float32)
        on = jnp.sum(codes, axis=1)
        both = codes @ codes.T
        # (1 - c)(1 - c)ᵀ = units - on_i - on_j + c cᵀ
        agree = 2 * both + codes.shape[1] - on[:, None] - on[None, :]
        return x, {"kernel": agree}


@register_proxy("nwot", paper="Mellor et al. 2021 (NASWOT, v2)")
def nwot(apply: Apply, params: Any, batch: Mapping[str, jax.Array], key: jax.Array) -> jax.Array:
    """log |det K|, K the images' agreement kernel over every ReLU's binary activation
    codes (`_CodesTap`), BN on the batch: high when the network tells images apart.

    The determinant is taken of K divided by its diagonal (the number of units), with
    images · log(units) added back, so float32 keeps it precise.
    """
    images = batch["image"]
    _, totals = tapped(_CodesTap(images.shape[0]), apply)(params, images, True)
    kernel = totals["kernel"]
    units = kernel[0, 0]
    _, logdet = jnp.linalg.slogdet(kernel / units)
    return logdet + images.shape[0] * jnp.log(units)


@dataclass(frozen=True)
class _ZenTap:
    """Zen-NAS' readings: Σ log σ over the BatchNorms (σ² the batch variance averaged over
    channels) and the features the global average pool reads."""

    def zeros(self) -> Totals:
        return {"log_bn": jnp.zeros((), jnp.float32)}

    def report(self, site: str, x: jax.Array, inputs: Mapping[str, jax.Array], fan_in: int):
        if site == "bn_var":  # a BN on a dead input (variance 0) is left out
            var = jnp.mean(x).astype(jnp.float32)
            return x, {"log_bn": jnp.where(var > 0, 0.5 * jnp.log(jnp.maximum(var, 1e-30)), 0.0)}
        if site == "features":
            return x, {"features": x}
        return x, {}


ZEN_MIXUP = 0.01
"""Zen-NAS' perturbation scale (alpha)."""


def zen_draws(
    params: Any, shape: tuple[int, ...], dtype: Any, key: jax.Array
) -> tuple[Any, jax.Array, jax.Array]:
    """Zen's random draws: `params` with every weight from N(0, 1), Gaussian images x of
    `shape`, and x + αε."""
    weights_key, x_key, eps_key = jax.random.split(key, 3)
    leaves, treedef = jax.tree.flatten(params)
    mask = jax.tree.leaves(weight_mask(params))
    keys = jax.random.split(weights_key, len(leaves))
    drawn = [
        jax.random.normal(k, p.shape, p.dtype) if m else p
        for k, p, m in zip(keys, leaves, mask, strict=True)
    ]
    x = jax.random.normal(x_key, shape, dtype)
    mixed = x + ZEN_MIXUP * jax.random.normal(eps_key, shape, dtype)
    return jax.tree.unflatten(treedef, drawn), x, mixed


def zen_of(apply: Apply, weights: Any, x: jax.Array, mixed: jax.Array) -> jax.Array:
    """The Zen score of the network at `weights` for the images `x` and `mixed`."""
    _, first = tapped(_ZenTap(), apply)(weights, x, True)
    _, second = tapped(_ZenTap(), apply)(weights, mixed, True)
    diff = jnp.abs(first["features"] - second["features"])
    gap = jnp.mean(jnp.sum(diff.reshape(x.shape[0], -1), axis=1))
    return jnp.log(gap) + first["log_bn"]


@register_proxy("zen", paper="Lin et al. 2021 (Zen-NAS)")
def zen(apply: Apply, params: Any, batch: Mapping[str, jax.Array], key: jax.Array) -> jax.Array:
    """log E ||f(x) - f(x + αε)||₁ + Σ log σ over the BatchNorms, with every weight drawn
    from N(0, 1), x and ε Gaussian images, f the features before the global average pool
    and σ each BN's batch deviation (BN on the batch): the network's expressivity. Reads
    only the batch's shape.

    Departs from the reference code in two ways: σ is the batch's deviation (as the paper
    defines it), not the running average PyTorch's BN keeps after the two passes; and a
    BN whose input is dead (variance 0, behind a `none` edge) is left out rather than
    adding log 0.
    """
    images = batch["image"]
    weights, x, mixed = zen_draws(params, images.shape, images.dtype, key)
    return zen_of(apply, weights, x, mixed)


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
