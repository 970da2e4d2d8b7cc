"""XLA CPU library flags on the convolutions of a DARTS edge, as one JSON line.

For each flag setting (its own process, since XLA reads `XLA_FLAGS` once), times the
forward and backward pass of the convolutions a DARTS edge runs at the deeper cells'
sizes (batch 64: 16x16 maps with 32 channels, 8x8 with 64): nasax's `conv2d` (1x1 and
3x3 dense, as in `sep_conv`'s pointwise step and `nor_conv`), its depthwise 3x3, and a
whole mixed edge of the 8 DARTS ops. It also says whether the compiled HLO holds a
YNNPACK fusion or a oneDNN custom call, i.e. whether the flag reached these convs.

    python benchmarks/cpu_flags.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

SETTINGS = {
    "default": "",
    "ynn_convolutions": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution,dot,eltwise",
    "ynn_off": "--xla_cpu_experimental_ynn_fusion_type=",
    "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
}
SHAPES = [(16, 32), (8, 64)]  # (map size, channels)


def _time(fn, *args, repeats: int = 20) -> float:
    """Median milliseconds of `fn(*args)`, compiled and warmed up first."""
    import jax
    import numpy as np

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1e3, 2)


def _library_convs(hlo: str) -> dict[str, int]:
    """Convolutions in the HLO: all, those inside YNNPACK fusions, oneDNN custom calls."""
    bodies = dict(re.findall(r"^(%[\w.-]+) [^\n]*\{\n(.*?)^\}", hlo, flags=re.M | re.S))
    ynn = re.findall(r"%ynn_fusion[\w.]* = .*?calls=(%[\w.-]+)", hlo)
    return {
        "convolutions": hlo.count(" convolution("),
        "in_ynn_fusions": sum(bodies.get(name, "").count(" convolution(") for name in ynn),
        "onednn_calls": hlo.count("__onednn$"),
    }


def measure() -> dict:
    """The figures for the flags this process runs with."""
    import jax
    from flax import nnx

    from nasax.supernet.cells import MixedEdge
    from nasax.supernet.ops import conv2d, depthwise_conv
    from nasax.supernet.spaces import get_space

    out: dict = {}
    for size, channels in SHAPES:
        key = jax.random.key(0)
        x = jax.random.normal(key, (64, size, size, channels))
        figures = {}
        hlo = ""
        for name, k in (("conv1x1", 1), ("conv3x3", 3)):
            kernel = jax.random.normal(key, (k, k, channels, channels)) * 0.1

            def loss(x, kernel, k=k):
                return (conv2d(x, kernel, stride=1, padding=k // 2) ** 2).sum()

            fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
            figures[name] = _time(fn, x, kernel)
            hlo += fn.lower(x, kernel).compile().as_text()
        dw = jax.random.normal(key, (3, 3, 1, channels)) * 0.1

        def dw_loss(x, kernel):
            return (depthwise_conv(x, kernel, stride=1, padding=1, dilation=1) ** 2).sum()

        fn = jax.jit(jax.grad(dw_loss, argnums=(0, 1)))
        figures["depthwise3x3"] = _time(fn, x, dw)
        hlo += fn.lower(x, dw).compile().as_text()

        edge = MixedEdge(get_space("darts").ops, channels, 1, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(edge)
        weights = jax.nn.softmax(jax.random.normal(key, (len(get_space("darts").ops),)))

        def edge_loss(state, weights, x, graphdef=graphdef):
            y = nnx.merge(graphdef, state)(x, weights, True)
            return (y**2).sum()

        fn = jax.jit(jax.grad(edge_loss, argnums=(0, 1, 2)))
        figures["mixed_edge"] = _time(fn, state, weights, x, repeats=10)
        hlo += fn.lower(state, weights, x).compile().as_text()
        figures.update(_library_convs(hlo))
        out[f"{size}x{size}x{channels}"] = figures
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure()))
        return {}
    result = {"bench": "cpu_flags", "ms_forward_backward_batch64": {}}
    for name in args.settings:
        env = {**os.environ, "XLA_FLAGS": SETTINGS[name]}
        run = subprocess.run(
            [sys.executable, __file__, "--one"], env=env, capture_output=True, text=True
        )
        lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
        if run.returncode or not lines:
            result["ms_forward_backward_batch64"][name] = {"error": run.stderr[-300:]}
        else:
            result["ms_forward_backward_batch64"][name] = json.loads(lines[-1])
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
