"""Primitive operations of cell edges, registered by name.

Every op is built as ``factory(channels, stride, affine, rngs)`` and called as
``op(x, train)`` on NHWC arrays; at stride 2 it halves height and width (rounding up).
Convolutions have no bias and come in ReLU-conv-BN order, as in the DARTS reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from nasax.core.registry import Registry
from nasax.engine.marking import block, forward_mode
from nasax.engine.taps import tap

_DIMS = ("NHWC", "HWIO", "NHWC")


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def flat_uniform(
    key: jax.Array, shape: tuple[int, ...], dtype: Any, low: float, high: float
) -> jax.Array:
    """`jax.random.uniform(key, shape, dtype, low, high)`, drawn as one flat vector.

    Threefry numbers the elements in row-major order, so the values are the same; but on
    CPU XLA compiles a 1-D draw about 8x faster than a 4-D one, and eager initialisation
    compiles one draw per parameter shape (benchmarks/README.md).
    """
    return jax.random.uniform(key, (math.prod(shape),), dtype, low, high).reshape(shape)


@partial(jax.jit, static_argnums=(1, 2))
def _torch_default_init(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    fan_in = shape[-2] * math.prod(shape[:-2])
    variance = jnp.asarray((1.0 / 3.0) / fan_in, dtype)  # in `dtype`, as variance_scaling
    bound = jnp.sqrt(3 * variance).astype(dtype)
    return flat_uniform(key, shape, dtype, -1.0, 1.0) * bound


def torch_default_init(
    key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32
) -> jax.Array:
    """PyTorch's default conv/linear init (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in)).

    Bit for bit `jax.nn.initializers.variance_scaling(1/3, "fan_in", "uniform")`, as one
    compiled program per shape with a flat draw (`flat_uniform`).
    """
    return _torch_default_init(key, tuple(shape), jnp.dtype(dtype))


# On CPU a depthwise conv runs as k*k shifted windows times per-channel weights: XLA's
# grouped conv is 3-10x slower, and a dense conv with a diagonal kernel does C times the
# work. The windows' kernel gradient (a reduction over batch and space per tap) runs as
# a dense conv whose diagonal is kept, up to this many channels: it compiles in half the
# time of autodiff's per-tap reductions and runs as fast or faster (benchmarks/README.md).
CPU_DENSE_KERNEL_GRAD_MAX_CHANNELS = 256


class Op(Protocol):
    def __call__(self, x: jax.Array, train: bool) -> jax.Array: ...


@dataclass(frozen=True)
class OpSpec:
    """A registered primitive.

    Attributes:
        factory: builds the op: ``factory(channels, stride, affine, rngs)``.
        zero: the op outputs zeros, so a weighted sum may skip computing it.
        norm_on_mixed_edge: a mixed edge follows the op with a non-affine BatchNorm
            (DARTS does this for the parameter-free pools so their scale matches convs).
        identity_at_stride_1: the op is the identity at stride 1 (drop path spares it).
    """

    factory: Callable[[int, int, bool, nnx.Rngs], Op]
    zero: bool = False
    norm_on_mixed_edge: bool = False
    identity_at_stride_1: bool = False


BUILTIN_OPS = (
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
)
"""The ops this module registers (nasax's own, as opposed to a user's)."""

OPS: Registry[OpSpec] = Registry("op", dict.fromkeys(BUILTIN_OPS, __name__))


def register_op(name: str, **flags: bool) -> Callable:
    """Decorator: registers an op factory under `name` with the given OpSpec flags."""

    def wrap(factory: Callable[[int, int, bool, nnx.Rngs], Op]):
        OPS.register(name, OpSpec(factory, **flags))
        return factory

    return wrap


class ParamKeys:
    """Parameter keys drawn from one key with a Python counter; stands in for `nnx.Rngs`.

    Module constructors only call `.params()`. `nnx.Rngs` keeps its counter in a
    Variable, and under tracing (`nnx.eval_shape`, `jit`) each draw then costs time
    proportional to everything traced so far, which made building a supernet quadratic.
    """

    def __init__(self, key: jax.Array) -> None:
        self.key, self.count = key, 0

    def params(self) -> jax.Array:
        self.count += 1
        return jax.random.fold_in(self.key, self.count)


def param_keys(rngs: nnx.Rngs | ParamKeys) -> ParamKeys:
    """One draw from `rngs`, turned into a cheap key sequence for a whole network."""
    return rngs if isinstance(rngs, ParamKeys) else ParamKeys(rngs.params())


def build_op(name: str, channels: int, stride: int, affine: bool, rngs: nnx.Rngs) -> Op:
    """Builds the registered op `name`."""
    return OPS.get(name).factory(channels, stride, affine, rngs)


# ------------------------------------------------------------------ convolution kernels


def _pads(padding: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((padding, padding), (padding, padding))


def _conv(
    x: jax.Array, kernel: jax.Array, stride: int, padding: int, dilation: int, groups: int = 1
) -> jax.Array:
    """The plain XLA convolution (NHWC x HWIO, symmetric padding)."""
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=_pads(padding),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=_DIMS,
        feature_group_count=groups,
    )


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_canonical_grads(
    x: jax.Array, kernel: jax.Array, stride: int, padding: int, dilation: int
) -> jax.Array:
    """A dense NHWC/HWIO conv whose gradients are themselves plain NHWC/HWIO convs.

    XLA's CPU backend turns the convs autodiff emits (swapped dimension labels) into
    fast library calls only at the top level of a program: inside `lax.switch` branches
    (GDAS' and the single-path strategies' one op per edge) they ran 13-85x slower.
    Writing both gradients in the forward layout, with explicit transposes, keeps them
    fast there too.
    """
    return _conv(x, kernel, stride, padding, dilation)


def _conv_fwd(x, kernel, stride, padding, dilation):
    return _conv(x, kernel, stride, padding, dilation), (x, kernel)


def _input_grad_pads(
    x: jax.Array, g: jax.Array, size: int, stride: int, padding: int, dilation: int
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(low, high) padding of the stride-dilated output gradient `g` that makes its
    correlation with the flipped kernel the input gradient, rows and columns."""
    low = dilation * (size - 1) - padding
    rows = (low, x.shape[1] - 1 - (g.shape[1] - 1) * stride + padding)
    cols = (low, x.shape[2] - 1 - (g.shape[2] - 1) * stride + padding)
    return rows, cols


def _dense_kernel_grad(
    x: jax.Array, g: jax.Array, size: int, stride: int, padding: int, dilation: int
) -> jax.Array:
    """A dense conv's kernel gradient, (C_in, k, k, C_out): channels in as the batch,
    images as the features, g as the kernel; the conv's stride and dilation trade
    places, and output (i, j) is tap (i, j)."""
    dk = _conv(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), dilation, padding, stride)
    return dk[:, :size, :size, :]


def _conv_bwd(stride, padding, dilation, res, g):
    x, kernel = res
    size = kernel.shape[0]
    # Input gradient: the stride-dilated g correlated with the flipped, io-swapped kernel.
    dx = lax.conv_general_dilated(
        g,
        jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2),
        window_strides=(1, 1),
        padding=_input_grad_pads(x, g, size, stride, padding, dilation),
        lhs_dilation=(stride, stride),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=_DIMS,
    )
    dk = _dense_kernel_grad(x, g, size, stride, padding, dilation)
    return dx, dk.transpose(1, 2, 0, 3)


_conv_canonical_grads.defvjp(_conv_fwd, _conv_bwd)


def conv2d(
    x: jax.Array, kernel: jax.Array, *, stride: int, padding: int, dilation: int = 1
) -> jax.Array:
    """Dense NHWC x HWIO conv, symmetric padding; on CPU with layout-stable gradients
    (except when traced for forward mode, where only XLA's own conv differentiates)."""
    if forward_mode():
        return _conv(x, kernel, stride, padding, dilation)

    def cpu(kernel: jax.Array) -> jax.Array:
        return _conv_canonical_grads(x, kernel, stride, padding, dilation)

    return lax.platform_dependent(
        kernel, cpu=cpu, default=lambda k: _conv(x, k, stride, padding, dilation)
    )


def _windows(
    x: jax.Array, size: int, stride: int, padding: int, dilation: int, fill: float = 0.0
) -> list[jax.Array]:
    """The size*size taps of a k x k window over `x` padded with `fill`, row-major:
    tap (i, j) holds the input pixel each output pixel sees at that window position."""
    n, h, w, c = x.shape
    pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    xp = jnp.pad(x, pads, constant_values=fill)
    span = dilation * (size - 1)
    rows = (h + 2 * padding - span - 1) // stride + 1
    cols = (w + 2 * padding - span - 1) // stride + 1
    return [
        lax.slice(
            xp,
            (0, i * dilation, j * dilation, 0),
            (n, i * dilation + (rows - 1) * stride + 1, j * dilation + (cols - 1) * stride + 1, c),
            (1, stride, stride, 1),
        )
        for i in range(size)
        for j in range(size)
    ]


def _depthwise_windows(
    x: jax.Array, kernel: jax.Array, stride: int, padding: int, dilation: int
) -> jax.Array:
    """Depthwise conv as a sum of shifted windows times per-channel weights (k, k, 1, C)."""
    size = kernel.shape[0]
    taps = _windows(x, size, stride, padding, dilation)
    out = taps[0] * kernel[0, 0, 0]
    for t, window in enumerate(taps[1:], 1):
        out = out + window * kernel[t // size, t % size, 0]
    return out


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise_windows_dense_kernel_grad(
    x: jax.Array, kernel: jax.Array, stride: int, padding: int, dilation: int
) -> jax.Array:
    """`_depthwise_windows` whose kernel gradient is the diagonal of a dense conv's.

    The dense form does C times the work of the per-tap reductions autodiff emits, but
    XLA's CPU library conv runs it as fast or faster at up to 256 channels, and it
    compiles in about half the time.
    """
    return _depthwise_windows(x, kernel, stride, padding, dilation)


def _dw_fwd(x, kernel, stride, padding, dilation):
    return _depthwise_windows(x, kernel, stride, padding, dilation), (x, kernel)


def _dw_bwd(stride, padding, dilation, res, g):
    x, kernel = res
    size = kernel.shape[0]
    # Input gradient: the stride-dilated g, padded, in windows with the flipped kernel.
    rows, cols = _input_grad_pads(x, g, size, stride, padding, dilation)
    zero = jnp.zeros((), g.dtype)
    spread = lax.pad(g, zero, ((0, 0, 0), (*rows, stride - 1), (*cols, stride - 1), (0, 0, 0)))
    dx = _depthwise_windows(spread, jnp.flip(kernel, (0, 1)), 1, 0, dilation)
    dense = _dense_kernel_grad(x, g, size, stride, padding, dilation)
    dk = jnp.diagonal(dense, axis1=0, axis2=3)  # (k, k, C)
    return dx, dk[:, :, None, :].astype(kernel.dtype)


_depthwise_windows_dense_kernel_grad.defvjp(_dw_fwd, _dw_bwd)


def depthwise_conv(
    x: jax.Array, kernel: jax.Array, *, stride: int, padding: int, dilation: int
) -> jax.Array:
    """Depthwise conv with a (k, k, 1, C) kernel, in the fastest form for the backend.

    On CPU it is a sum of k*k shifted windows, whose kernel gradient is a dense conv up
    to `CPU_DENSE_KERNEL_GRAD_MAX_CHANNELS`; elsewhere XLA's native grouped conv. Both
    compute the same function and have the same parameters.
    """
    channels = x.shape[-1]
    kernel = kernel.astype(x.dtype)

    def grouped(kernel: jax.Array) -> jax.Array:
        return _conv(x, kernel, stride, padding, dilation, groups=channels)

    def windows(kernel: jax.Array) -> jax.Array:
        if channels <= CPU_DENSE_KERNEL_GRAD_MAX_CHANNELS and not forward_mode():
            return _depthwise_windows_dense_kernel_grad(x, kernel, stride, padding, dilation)
        return _depthwise_windows(x, kernel, stride, padding, dilation)

    # Chosen when lowering for a platform, so exported programs carry the right form for each.
    return lax.platform_dependent(kernel, cpu=windows, default=grouped)


def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """1x1 conv at stride 1 as a contraction over the channel axis."""
    return jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0].astype(x.dtype))


class Conv(nnx.Module):
    """A bias-free 2-D convolution (dense, depthwise when `depthwise`)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        depthwise: bool = False,
        rngs: nnx.Rngs,
    ) -> None:
        if depthwise and c_in != c_out:
            raise ValueError("a depthwise conv keeps the channel count")
        shape = (kernel_size, kernel_size, 1 if depthwise else c_in, c_out)
        self.kernel = nnx.Param(torch_default_init(rngs.params(), shape))
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.depthwise = depthwise

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel.shape
        return tap("conv", self._conv(x), math.prod(kernel[:-1]))

    def _conv(self, x: jax.Array) -> jax.Array:
        if self.depthwise:
            return depthwise_conv(
                x,
                self.kernel[...],
                stride=self.stride,
                padding=self.padding,
                dilation=self.dilation,
            )
        if self.kernel.shape[:2] == (1, 1) and self.stride == 1 and self.padding == 0:
            return pointwise_conv(x, self.kernel[...])
        return conv2d(
            x,
            self.kernel[...].astype(x.dtype),
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
        )


class BatchNorm(nnx.Module):
    """BatchNorm over NHWC with PyTorch's semantics (momentum 0.1, eps 1e-5, unbiased
    running variance); `affine` adds a learned scale and bias.

    Running statistics are replaced with `set_value` rather than written through an
    index, which keeps tracing linear in the network size.
    """

    def __init__(self, channels: int, affine: bool, momentum: float = 0.1, eps: float = 1e-5):
        self.mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((channels,), jnp.float32))
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32)) if affine else None
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32)) if affine else None
        self.momentum, self.eps = momentum, eps

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if train:
            xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            mean = jnp.mean(xf, axis=(0, 1, 2))
            var = jnp.mean(jnp.square(xf - mean), axis=(0, 1, 2))
            n = x.size // x.shape[-1]
            m = self.momentum
            var = tap("bn_var", var)
            unbiased = var * (n / max(n - 1, 1))
            self.mean.set_value((1 - m) * self.mean[...] + m * lax.stop_gradient(mean))
            self.var.set_value((1 - m) * self.var[...] + m * lax.stop_gradient(unbiased))
        else:
            mean, var = self.mean[...], self.var[...]
        inv = lax.rsqrt(var + self.eps)
        if self.scale is not None:
            inv = inv * self.scale[...]
        y = (x - mean.astype(x.dtype)) * inv.astype(x.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


# ------------------------------------------------------------------ building blocks


def relu(x: jax.Array) -> jax.Array:
    """ReLU, its input reported to a proxy's tap (`nasax.engine.taps`)."""
    return jax.nn.relu(tap("relu", x))


class ReLUConvBN(nnx.Module):
    """ReLU, dense conv, BatchNorm."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool,
        rngs: nnx.Rngs,
    ) -> None:
        self.conv = Conv(c_in, c_out, kernel_size, stride=stride, padding=padding, rngs=rngs)
        self.bn = BatchNorm(c_out, affine)

    @block
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.bn(self.conv(relu(x)), train)


class DilConv(nnx.Module):
    """ReLU, depthwise (dilated) k x k conv, pointwise 1x1 conv, BatchNorm."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool,
        rngs: nnx.Rngs,
    ) -> None:
        self.depthwise = Conv(
            c_in,
            c_in,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            depthwise=True,
            rngs=rngs,
        )
        self.pointwise = Conv(c_in, c_out, 1, rngs=rngs)
        self.bn = BatchNorm(c_out, affine)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.bn(self.pointwise(self.depthwise(relu(x))), train)


class FactorizedConv(nnx.Module):
    """ReLU, a 1 x k then a k x 1 dense conv, BatchNorm: a k x k receptive field at two
    thin convs' cost (AmoebaNet's `conv_7x1_1x7`). Each conv takes the stride along its
    long axis, so the pair strides both."""

    def __init__(self, c: int, kernel_size: int, stride: int, affine: bool, rngs: nnx.Rngs) -> None:
        self.row = nnx.Param(torch_default_init(rngs.params(), (1, kernel_size, c, c)))
        self.column = nnx.Param(torch_default_init(rngs.params(), (kernel_size, 1, c, c)))
        self.bn = BatchNorm(c, affine)
        self.stride, self.pad = stride, kernel_size // 2

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s, p = self.stride, self.pad
        y = lax.conv_general_dilated(
            relu(x),
            self.row[...].astype(x.dtype),
            window_strides=(1, s),
            padding=((0, 0), (p, p)),
            dimension_numbers=_DIMS,
        )
        y = lax.conv_general_dilated(
            tap("conv", y, math.prod(self.row.shape[:-1])),
            self.column[...].astype(x.dtype),
            window_strides=(s, 1),
            padding=((p, p), (0, 0)),
            dimension_numbers=_DIMS,
        )
        return self.bn(tap("conv", y, math.prod(self.column.shape[:-1])), train)


class SepConv(nnx.Module):
    """Two DilConv blocks at dilation 1; only the first carries the stride."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool,
        rngs: nnx.Rngs,
    ) -> None:
        self.first = DilConv(c_in, c_in, kernel_size, stride, padding, 1, affine, rngs)
        self.second = DilConv(c_in, c_out, kernel_size, 1, padding, 1, affine, rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.second(self.first(x, train), train)


class FactorizedReduce(nnx.Module):
    """ReLU, two stride-2 1x1 convs (the second one pixel shifted), concat, BatchNorm.

    Halves the resolution without losing every other pixel. For odd sizes the shifted
    input is zero-padded at the far edge so both halves have the same size.
    """

    def __init__(self, c_in: int, c_out: int, affine: bool, rngs: nnx.Rngs) -> None:
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {c_out}")
        self.conv_even = Conv(c_in, c_out // 2, 1, stride=2, rngs=rngs)
        self.conv_odd = Conv(c_in, c_out // 2, 1, stride=2, rngs=rngs)
        self.bn = BatchNorm(c_out, affine)

    @block
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = relu(x)
        shifted = x[:, 1:, 1:, :]
        height, width = x.shape[1], x.shape[2]
        shifted = jnp.pad(shifted, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))
        out = jnp.concatenate([self.conv_even(x), self.conv_odd(shifted)], axis=-1)
        return self.bn(out, train)


class Zero(nnx.Module):
    """The `none` op: zeros of the output shape."""

    def __init__(self, stride: int) -> None:
        self.stride = stride

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return jnp.zeros_like(x[:, :: self.stride, :: self.stride, :])


class Identity(nnx.Module):
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return x


def _max_pool_window(x: jax.Array, stride: int) -> jax.Array:
    """3x3 max pool with padding 1 as XLA's `reduce_window` (padding never wins)."""
    return lax.reduce_window(
        x,
        -jnp.inf,
        lax.max,
        (1, 3, 3, 1),
        (1, stride, stride, 1),
        ((0, 0), (1, 1), (1, 1), (0, 0)),
    )


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool_taps(x: jax.Array, stride: int) -> jax.Array:
    """3x3 max pool over nine shifted windows; the gradient goes to the first maximal tap
    in row-major order, as `reduce_window`'s (and PyTorch's) does. On CPU the gradient
    `reduce_window` gets from autodiff (select-and-scatter) is 5-13x slower."""
    return _max_pool_taps_fwd(x, stride)[0]


def _max_pool_taps_fwd(x, stride):
    out, first = _max_pool_first_taps(x, stride)
    return out, (first, x.shape)


def _max_pool_first_taps(x: jax.Array, stride: int) -> tuple[jax.Array, jax.Array]:
    """The 3x3 max pool over nine shifted windows, and the first maximal tap of each output.

    Differentiated by plain autodiff, the chain of selects gives the same gradient as
    `_max_pool_taps`' rule, and it also has a forward-mode derivative."""
    taps = _windows(x, 3, stride, 1, 1, fill=-jnp.inf)
    out, first = taps[0], jnp.zeros(taps[0].shape, jnp.int8)
    for t, window in enumerate(taps[1:], 1):
        better = (window > out) | jnp.isnan(window)  # NaN wins, as in PyTorch
        out = jnp.where(better, window, out)
        first = jnp.where(better, jnp.int8(t), first)
    return out, first


def _max_pool_taps_bwd(stride, res, g):
    first, (n, h, w, c) = res
    rows, cols = g.shape[1], g.shape[2]
    zero = jnp.zeros((), g.dtype)
    dx = jnp.zeros((n, h + 2, w + 2, c), g.dtype)
    for t in range(9):
        i, j = divmod(t, 3)
        # Tap (i, j) of output pixel (a, b) is padded pixel (i + a*stride, j + b*stride).
        spread = (
            (0, 0, 0),
            (i, h + 2 - i - (rows - 1) * stride - 1, stride - 1),
            (j, w + 2 - j - (cols - 1) * stride - 1, stride - 1),
            (0, 0, 0),
        )
        dx = dx + lax.pad(jnp.where(first == t, g, zero), zero, spread)
    return (dx[:, 1 : h + 1, 1 : w + 1, :],)


_max_pool_taps.defvjp(_max_pool_taps_fwd, _max_pool_taps_bwd)


def max_pool(x: jax.Array, stride: int) -> jax.Array:
    """3x3 max pool with padding 1 (padding never wins); on CPU as shifted windows."""

    def cpu(x: jax.Array) -> jax.Array:
        if forward_mode():
            return _max_pool_first_taps(x, stride)[0]
        return _max_pool_taps(x, stride)

    return lax.platform_dependent(x, cpu=cpu, default=lambda x: _max_pool_window(x, stride))


def avg_pool(x: jax.Array, stride: int) -> jax.Array:
    """3x3 average pool with padding 1 that averages over real pixels only."""
    window, strides = (1, 3, 3, 1), (1, stride, stride, 1)
    pads = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = lax.reduce_window(x, 0.0, lax.add, window, strides, pads)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    count = lax.reduce_window(ones, 0.0, lax.add, window, strides, pads)
    return total / count


class Pool(nnx.Module):
    """A parameter-free pooling op."""

    def __init__(self, pool: Callable[[jax.Array, int], jax.Array], stride: int) -> None:
        self.pool = pool
        self.stride = stride

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.pool(x, self.stride)


# ------------------------------------------------------------------ the DARTS primitives


@register_op("none", zero=True)
def _none(c: int, stride: int, affine: bool, rngs: nnx.Rngs) -> Op:
    return Zero(stride)


@register_op("max_pool_3x3", norm_on_mixed_edge=True)
def _max_pool_3x3(c: int, stride: int, affine: bool, rngs: nnx.Rngs) -> Op:
    return Pool(max_pool, stride)


@register_op("avg_pool_3x3", norm_on_mixed_edge=True)
def _avg_pool_3x3(c: int, stride: int, affine: bool, rngs: nnx.Rngs) -> Op:
    return Pool(avg_pool, stride)


@register_op("skip_connect", identity_at_stride_1=True)
def _skip_connect(c: int, stride: int, affine: bool, rngs: nnx.Rngs) -> Op:
    return Identity() if stride == 1 else FactorizedReduce(c, c, affine, rngs)


def _register_sep_conv(size: int) -> None:
    factory = lambda c, stride, affine, rngs: SepConv(c, c, size, stride, size // 2, affine, rngs)
    register_op(f"sep_conv_{size}x{size}")(factory)


def _register_dil_conv(size: int) -> None:
    factory = lambda c, stride, affine, rngs: DilConv(c, c, size, stride, size - 1, 2, affine, rngs)
    register_op(f"dil_conv_{size}x{size}")(factory)


for _size in (3, 5):
    _register_sep_conv(_size)
    _register_dil_conv(_size)

# ------------------------------------------------------------------ published cells' extra ops
# Not in the DARTS search space, but in its reference network's op table: NASNet and
# AmoebaNet use them, and `nasax train` retrains those cells.

_register_sep_conv(7)


@register_op("conv_7x1_1x7")
def _conv_7x1_1x7(c: int, stride: int, affine: bool, rngs: nnx.Rngs) -> Op:
    return FactorizedConv(c, 7, stride, affine, rngs)


# ------------------------------------------------------------------ NAS-Bench-201's convs


def _register_nor_conv(size: int) -> None:
    def factory(c: int, stride: int, affine: bool, rngs: nnx.Rngs) -> Op:
        return ReLUConvBN(c, c, size, stride, size // 2, affine, rngs)

    register_op(f"nor_conv_{size}x{size}")(factory)


for _size in (1, 3):
    _register_nor_conv(_size)

__all__ = [
    "OPS",
    "BatchNorm",
    "Conv",
    "DilConv",
    "FactorizedConv",
    "FactorizedReduce",
    "OpSpec",
    "ReLUConvBN",
    "SepConv",
    "build_op",
    "depthwise_conv",
    "register_op",
]
