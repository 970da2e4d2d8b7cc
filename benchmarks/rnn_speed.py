"""Times the DARTS recurrent search step in nasax and in a PyTorch implementation of the
reference's (quark0/darts, rnn/), and prints one JSON line per run.

One step is the reference's search step (rnn/train_search.py, rnn/architect.py): an Adam
step on the alphas from a validation window's loss, then an SGD step on the weights from
a training window's loss, each stream carrying its hidden state (detached) from window to
window. Sizes default to the DARTS search protocol (embedding and hidden 300, batch 256,
BPTT 35) with Tiny Shakespeare's 65 characters; tokens are random (speed only).

    python benchmarks/rnn_speed.py --impl both            # nasax, torch, nasax, torch; ratio
    python benchmarks/rnn_speed.py --impl nasax --steps 5
    python benchmarks/rnn_speed.py --check --embed 32 --hidden 32 --batch 16

nasax runs its own search code path: `language_setup` on a `Config`, the registered
`darts` strategy, `jax.jit(strategy.step, donate_argnums=0)`, windows built as
`LanguageSearchRun._window` builds them (padded to a multiple of 8 steps; `--pad none`:
exactly `--bptt`). The torch side needs `pip install torch==2.13.0`. `--impl both` runs
each measurement in its own process, alternately, and ends with the ratio of the median
tokens/s (nasax over torch). `--threads N` sets torch's threads and pins either process
to N cores, so XLA's thread pool has the same size. `--check` starts the torch model
from nasax's weights and alphas, dropout off, and compares the loss of one window and its
gradients, then the states two first-order steps leave; it exits 1 if they disagree.

The torch step keeps the reference's work: the architecture step's backward also takes
the weights' gradients (then dropped), and the weight step's loss has the temporal
activation regularisation (beta 1e-3), which nasax's search step leaves out. Not
mirrored: the reference's `gc.collect()` after every step, its windows of random length
(here every window is `bptt` long, so the lr is never rescaled) and its gradient
accumulation over `small_batch_size` (equal to the batch by default: none).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib import metadata
from typing import Any, NamedTuple

import numpy as np

BENCH = "rnn_speed"

PRIMITIVES = ("none", "tanh", "relu", "sigmoid", "identity")
"""The reference's recurrent ops (rnn/genotypes.py), in its order."""

STEPS = 8
"""Intermediate nodes of the reference's cell; it outputs their mean."""

INIT_RANGE = 0.04
"""Weights and embeddings start uniform in ±INIT_RANGE (rnn/model.py)."""

WINDOWS = 4
"""Distinct windows per stream; a step reads window (step mod WINDOWS), and a stream's
hidden state starts afresh at window 0, as a search does at an epoch's start."""


class Dropouts(NamedTuple):
    """The reference's search dropout rates (rnn/train_search.py); dropoute is 0 there."""

    output: float = 0.75  # dropout: locked, on the cell's outputs
    hidden: float = 0.25  # dropouth: on h and every state a node projects
    cell_input: float = 0.75  # dropoutx: on the cell's input
    embedding: float = 0.2  # dropouti: locked, on the embeddings


NO_DROPOUT = Dropouts(0.0, 0.0, 0.0, 0.0)


class Protocol(NamedTuple):
    """The reference's search hyperparameters (rnn/train_search.py defaults)."""

    lr: float = 20.0
    weight_decay: float = 5e-7
    clip: float = 0.25
    arch_lr: float = 3e-3
    arch_betas: tuple[float, float] = (0.9, 0.999)
    arch_weight_decay: float = 1e-3
    tar: float = 1e-3  # beta: temporal activation regularisation in the weight step
    dropouts: Dropouts = Dropouts()


def token_streams(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Random (batch, WINDOWS * bptt + 1) token ids for the weight and architecture
    streams, batch-major as `nasax.loop.text.batchify` lays them out."""
    rng = np.random.default_rng(args.seed)
    shape = (args.batch, WINDOWS * args.bptt + 1)
    return tuple(rng.integers(0, args.vocab, shape, dtype=np.int32) for _ in range(2))


def versions(*packages: str) -> dict[str, str]:
    return {name: metadata.version(name) for name in packages}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def figures(args: argparse.Namespace, impl: str, seconds: float, **extra: Any) -> dict:
    """The JSON line of one timed run."""
    return {
        "bench": BENCH,
        "impl": impl,
        "tokens_per_sec": round(args.batch * args.bptt * args.steps / seconds, 1),
        "step_ms": round(1e3 * seconds / args.steps, 1),
        **extra,
        "embed": args.embed,
        "hidden": args.hidden,
        "batch": args.batch,
        "bptt": args.bptt,
        "vocab": args.vocab,
        "steps": args.steps,
        "warmup": args.warmup,
        "order": args.order,
        "threads": args.threads,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


# ------------------------------------------------------------------ nasax


def nasax_config(args: argparse.Namespace, dropouts: Dropouts, protocol: Protocol) -> Any:
    """The search config of the reference's protocol at the benchmark's sizes."""
    from nasax.search.options import validate_config

    darts: dict[str, Any] = {"order": args.order}
    if args.order == 2:
        darts["hessian"] = args.hessian
    return validate_config(
        {
            "seed": args.seed,
            "data": {"name": "text:synthetic"},  # never read: the corpus is built here
            "model": {"space": "darts_rnn"},
            "search": {"strategy": "darts", "epochs": 1, "batch_size": args.batch, "darts": darts},
            "text": {
                "embed_size": args.embed,
                "hidden_size": args.hidden,
                "bptt": args.bptt,
                "variable_length": False,
                "dropout": {**dropouts._asdict(), "words": 0.0},
            },
            "optim": {
                "weights": {
                    "lr": protocol.lr,
                    "momentum": 0.0,
                    "weight_decay": protocol.weight_decay,
                    "grad_clip": protocol.clip,
                    "schedule": "constant",
                },
                "arch": {
                    "lr": protocol.arch_lr,
                    "betas": list(protocol.arch_betas),
                    "weight_decay": protocol.arch_weight_decay,
                },
            },
        },
        "rnn_speed",
    )


def nasax_search(args: argparse.Namespace, dropouts: Dropouts) -> tuple[Any, Any, Any]:
    """(setup, strategy, initial state) through nasax's language-model search path."""
    import jax

    from nasax.loop.text import TextCorpus
    from nasax.search.language import language_setup
    from nasax.search.options import strategy_options
    from nasax.search.strategy import STRATEGIES

    config = nasax_config(args, dropouts, Protocol())
    weight, arch = token_streams(args)
    vocab = tuple(chr(0x100 + i) for i in range(args.vocab))
    corpus = TextCorpus("text:synthetic", "char", vocab, weight.ravel(), arch.ravel(), None)
    setup = language_setup(config, corpus, steps_per_epoch=args.warmup + args.steps)
    strategy = STRATEGIES.get("darts")(setup, strategy_options(config.search))
    return setup, strategy, strategy.init(jax.random.PRNGKey(args.seed))


def nasax_windows(data: np.ndarray, which: int, bptt: int, pad: str) -> list[dict]:
    """The stream's windows as `LanguageSearchRun._window` builds them (tokens, label,
    valid, stream, reset), padded to the search's bucket or to exactly `bptt`, on the
    device (a search prefetches them)."""
    import jax

    from nasax.loop.text import Window, padded_window

    out = []
    for k in range(WINDOWS):
        window = Window(k * bptt, bptt)
        if pad == "bucket":  # the search's padding (bptt plus multiples of 8 around it)
            batch = padded_window(data, window, anchor=bptt)
        else:
            batch = padded_window(data, window, bptt)
        rows = data.shape[0]
        batch["stream"] = np.full(rows, which, np.int32)
        batch["reset"] = np.full(rows, float(k == 0), np.float32)
        out.append(jax.device_put(batch))
    return out


def run_nasax(args: argparse.Namespace) -> dict:
    import jax

    from nasax.search.language import ARCH_STREAM, WEIGHT_STREAM

    jax.config.update("jax_enable_compilation_cache", False)  # the compile is cold
    _, strategy, state = nasax_search(args, Protocol().dropouts)
    weight, arch = token_streams(args)
    train = nasax_windows(weight, WEIGHT_STREAM, args.bptt, args.pad)
    val = nasax_windows(arch, ARCH_STREAM, args.bptt, args.pad)
    state = jax.block_until_ready(state)

    tick = time.perf_counter()
    step = jax.jit(strategy.step, donate_argnums=0).lower(state, train[0], val[0]).compile()
    compile_seconds = time.perf_counter() - tick

    metrics = None
    for i in range(args.warmup):
        state, metrics = step(state, train[i % WINDOWS], val[i % WINDOWS])
    jax.block_until_ready((state, metrics))
    tick = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        state, metrics = step(state, train[i % WINDOWS], val[i % WINDOWS])
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - tick

    loss = float(metrics["train_loss"])
    if not np.isfinite(loss):
        raise FloatingPointError(f"nasax: non-finite training loss {loss}")
    return figures(
        args,
        "nasax",
        seconds,
        compile_seconds=round(compile_seconds, 2),
        train_loss=round(loss, 4),
        scan_steps=int(train[0]["tokens"].shape[1]),
        pad=args.pad,
        hessian=args.hessian if args.order == 2 else None,
        backend=jax.default_backend(),
        **versions("jax", "jaxlib", "flax", "optax"),
    )


# ------------------------------------------------------------------ torch


def mask2d(batch: int, features: int, rate: float) -> Any:
    """The reference's `mask2d`: one mask per sequence, 0 or 1 / keep; None at rate 0."""
    import torch

    if rate == 0:
        return None
    keep = 1.0 - rate
    return torch.floor(torch.rand(batch, features) + keep) / keep


def locked_dropout(x: Any, rate: float) -> Any:
    """The reference's `LockedDropout` on (time, batch, features): one mask for all steps."""
    if rate == 0:
        return x
    keep = 1.0 - rate
    mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(keep) / keep
    return mask.expand_as(x) * x


class TorchBN:
    """The search cell's `nn.BatchNorm1d(nhid, affine=False)` in training mode, one for the
    first state and every node, its running statistics updated at every call."""

    def __init__(self, hidden: int) -> None:
        import torch

        self.mean, self.var = torch.zeros(hidden), torch.ones(hidden)

    def __call__(self, s: Any) -> Any:
        import torch.nn.functional as F

        return F.batch_norm(s, self.mean, self.var, None, None, True, 0.1, 1e-5)


def search_cell(
    params: dict[str, Any],
    probs: Any,
    bn: TorchBN,
    x: Any,
    h_prev: Any,
    x_mask: Any,
    h_mask: Any,
) -> Any:
    """One step of the reference's `DARTSCellSearch.cell`: the first state through a
    highway from [x, h], then per node one matmul of every earlier (masked) state with the
    node's matrix, a sum over the non-zero ops and the node's edges weighted by the
    softmaxed alphas, BN on every state, and the mean of the nodes."""
    import torch

    nhid = h_prev.size(-1)
    x = x if x_mask is None else x * x_mask
    h = h_prev if h_mask is None else h_prev * h_mask
    c0, h0 = torch.split(torch.cat([x, h], dim=-1).mm(params["w0"]), nhid, dim=-1)
    s0 = bn(h_prev + c0.sigmoid() * (h0.tanh() - h_prev))
    activations = {
        "tanh": torch.tanh,
        "relu": torch.relu,
        "sigmoid": torch.sigmoid,
        "identity": lambda v: v,
    }
    states, offset = s0.unsqueeze(0), 0
    for i in range(STEPS):
        masked = states if h_mask is None else states * h_mask.unsqueeze(0)
        ch = masked.view(-1, nhid).mm(params["ws"][i]).view(i + 1, -1, 2 * nhid)
        c, hc = torch.split(ch, nhid, dim=-1)
        c = c.sigmoid()
        s = torch.zeros_like(s0)
        for k, name in enumerate(PRIMITIVES):
            if name == "none":
                continue
            unweighted = states + c * (activations[name](hc) - states)
            s += torch.sum(probs[offset : offset + i + 1, k].view(-1, 1, 1) * unweighted, dim=0)
        states = torch.cat([states, bn(s).unsqueeze(0)], 0)
        offset += i + 1
    return torch.mean(states[-STEPS:], dim=0)


def torch_lm(
    params: dict[str, Any],
    alphas: Any,
    bn: TorchBN,
    tokens: Any,
    hidden: Any,
    dropouts: Dropouts,
) -> tuple[Any, Any, Any]:
    """The reference's `RNNModelSearch.forward` in training mode on (time, batch) tokens:
    (log-probabilities (time, batch, vocab), last hidden state, the cell's raw outputs).
    The decoder is tied to the embedding."""
    import torch
    import torch.nn.functional as F

    steps, batch = tokens.shape
    emb = locked_dropout(F.embedding(tokens, params["embedding"]), dropouts.embedding)
    x_mask = mask2d(batch, emb.size(2), dropouts.cell_input)
    h_mask = mask2d(batch, hidden.size(1), dropouts.hidden)
    probs = F.softmax(alphas, dim=-1)
    outputs = []
    for t in range(steps):
        hidden = search_cell(params, probs, bn, emb[t], hidden, x_mask, h_mask)
        outputs.append(hidden)
    raw = torch.stack(outputs)
    out = locked_dropout(raw, dropouts.output)
    logit = F.linear(out.view(-1, out.size(2)), params["embedding"], params["bias"])
    return F.log_softmax(logit, dim=-1).view(steps, batch, -1), hidden, raw


def clip_(grads: list[Any], max_norm: float) -> float:
    """architect.py's `_clip`: scales `grads` in place when their norm passes `max_norm`
    and returns the coefficient, also when it is above 1."""
    total = sum(float(g.norm(2)) ** 2 for g in grads) ** 0.5
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in grads:
            g.mul_(coef)
    return coef


class TorchSearch:
    """The reference's search state and step: weights (SGD), alphas (Adam; not among the
    weights, as the reference keeps them outside `parameters()`), BN statistics, and the
    hidden state of each stream."""

    def __init__(
        self,
        args: argparse.Namespace,
        protocol: Protocol,
        start: tuple[dict[str, Any], Any] | None = None,
    ) -> None:
        """The reference's initialisation, or the (weights, alphas) of `start`."""
        import torch

        def uniform(*shape: int) -> Any:
            return torch.empty(*shape).uniform_(-INIT_RANGE, INIT_RANGE).requires_grad_()

        self.protocol, self.order = protocol, args.order
        if start is None:
            n_edges = STEPS * (STEPS + 1) // 2
            start = (
                {
                    "embedding": uniform(args.vocab, args.embed),
                    "bias": torch.zeros(args.vocab, requires_grad=True),
                    "w0": uniform(args.embed + args.hidden, 2 * args.hidden),
                    "ws": [uniform(args.hidden, 2 * args.hidden) for _ in range(STEPS)],
                },
                (1e-3 * torch.randn(n_edges, len(PRIMITIVES))).requires_grad_(),
            )
        self.params, self.alphas = start
        self.bn = TorchBN(args.hidden)
        self.weight_opt = torch.optim.SGD(
            self.weights(), lr=protocol.lr, weight_decay=protocol.weight_decay
        )
        self.arch_opt = torch.optim.Adam(
            [self.alphas],
            lr=protocol.arch_lr,
            betas=protocol.arch_betas,
            weight_decay=protocol.arch_weight_decay,
        )
        self.hidden = [torch.zeros(args.batch, args.hidden) for _ in range(2)]

    def weights(self) -> list[Any]:
        """The reference's `parameters()`: the embedding (the decoder's weight, tied), the
        decoder's bias, W0 and each node's matrix."""
        p = self.params
        return [p["embedding"], p["bias"], p["w0"], *p["ws"]]

    def as_params(self, weights: list[Any]) -> dict[str, Any]:
        return {"embedding": weights[0], "bias": weights[1], "w0": weights[2], "ws": weights[3:]}

    def nll(self, params: dict[str, Any], hidden: Any, x: Any, y: Any) -> tuple[Any, Any, Any]:
        """(the model's `_loss`, last hidden state, raw outputs) with dropout on."""
        import torch.nn.functional as F

        log_prob, last, raw = torch_lm(
            params, self.alphas, self.bn, x, hidden, self.protocol.dropouts
        )
        return F.nll_loss(log_prob.view(-1, log_prob.size(2)), y.reshape(-1)), last, raw

    def step(self, train: tuple[Any, Any], val: tuple[Any, Any], reset: bool) -> Any:
        """One search step (train_search.py's loop body at small_batch_size = batch_size
        and a window of `bptt`, so the lr is not rescaled); the weight step's NLL."""
        import torch

        p = self.protocol
        hidden, hidden_valid = (torch.zeros_like(h) if reset else h.detach() for h in self.hidden)
        self.arch_opt.zero_grad()
        if self.order == 1:  # architect._backward_step
            loss, hidden_valid, _ = self.nll(self.params, hidden_valid, *val)
            loss.backward()  # as the reference: the weights' gradients too, dropped below
        else:
            hidden_valid = self.unrolled_backward(hidden, train, hidden_valid, val)
        self.arch_opt.step()

        self.weight_opt.zero_grad()
        raw_loss, hidden, raw = self.nll(self.params, hidden, *train)
        loss = raw_loss + p.tar * (raw[1:] - raw[:-1]).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.weights(), p.clip)
        self.weight_opt.step()
        self.hidden = [hidden.detach(), hidden_valid.detach()]
        return raw_loss.detach()

    def unrolled_backward(
        self, hidden: Any, train: tuple[Any, Any], hidden_valid: Any, val: tuple[Any, Any]
    ) -> Any:
        """architect._backward_step_unrolled: the alphas' gradient through one virtual SGD
        step, its Hessian-vector product by central differences (r = 1e-2)."""
        import torch

        p, eta = self.protocol, self.protocol.lr
        theta = [w.detach() for w in self.weights()]
        loss, _, _ = self.nll(self.params, hidden, *train)
        grads = list(torch.autograd.grad(loss, self.weights()))
        clip_coef = clip_(grads, p.clip)
        unrolled = [
            (w - eta * (g + p.weight_decay * w)).requires_grad_() for w, g in zip(theta, grads)
        ]
        loss, hidden_next, _ = self.nll(self.as_params(unrolled), hidden_valid, *val)
        dalpha, *dtheta = torch.autograd.grad(loss, [self.alphas, *unrolled])
        clip_(dtheta, p.clip)
        r = 1e-2 / torch.cat([v.view(-1) for v in dtheta]).norm()
        arch_grads = []
        for sign in (1.0, -1.0):
            moved = [w + sign * r * v for w, v in zip(theta, dtheta)]
            loss, _, _ = self.nll(self.as_params(moved), hidden, *train)
            arch_grads.append(torch.autograd.grad(loss, self.alphas)[0])
        implicit = (arch_grads[0] - arch_grads[1]) / (2 * r)
        self.alphas.grad = dalpha - eta * clip_coef * implicit
        return hidden_next


def torch_windows(data: np.ndarray, bptt: int) -> list[tuple[Any, Any]]:
    """The stream's (inputs, targets) windows, time-major as the reference's `get_batch`."""
    import torch

    columns = torch.from_numpy(np.ascontiguousarray(data.T).astype(np.int64))
    return [
        (columns[k * bptt : (k + 1) * bptt], columns[k * bptt + 1 : (k + 1) * bptt + 1])
        for k in range(WINDOWS)
    ]


def run_torch(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    search = TorchSearch(args, Protocol())
    weight, arch = token_streams(args)
    train, val = torch_windows(weight, args.bptt), torch_windows(arch, args.bptt)

    def step(i: int) -> Any:
        return search.step(train[i % WINDOWS], val[i % WINDOWS], reset=i % WINDOWS == 0)

    for i in range(args.warmup):
        step(i)
    tick = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        loss = step(i)
    seconds = time.perf_counter() - tick

    loss = float(loss)
    if not np.isfinite(loss):
        raise FloatingPointError(f"torch: non-finite training loss {loss}")
    return figures(
        args,
        "torch",
        seconds,
        compile_seconds=None,
        train_loss=round(loss, 4),
        scan_steps=args.bptt,
        hessian="finite_difference" if args.order == 2 else None,
        torch_threads=torch.get_num_threads(),
        **versions("torch"),
    )


# ------------------------------------------------------------------ the check


def torch_start(state: Any) -> tuple[dict[str, Any], Any]:
    """nasax's weights and alphas as the torch model's leaf tensors (decoder tied)."""
    import torch
    from flax import nnx

    def tensor(a: Any) -> Any:
        return torch.from_numpy(np.array(a, np.float32)).requires_grad_()

    lm = nnx.to_pure_dict(state.params)["lm"]
    params = {
        "embedding": tensor(lm["embedding"]),
        "bias": tensor(lm["bias"]),
        "w0": tensor(lm["cell"]["w0"]),
        "ws": [tensor(w) for w in lm["cell"]["ws"]],
    }
    return params, tensor(nnx.to_pure_dict(state.arch)["lm"]["alpha_recurrent"])


def nasax_arrays(tree: Any) -> dict[str, np.ndarray]:
    """The alphas and weights of nasax params, arch or their gradients, by torch name."""
    from flax import nnx

    lm = nnx.to_pure_dict(tree)["lm"]
    if "alpha_recurrent" in lm:
        return {"alpha": np.asarray(lm["alpha_recurrent"])}
    out = {"embedding": lm["embedding"], "w0": lm["cell"]["w0"], "ws": lm["cell"]["ws"]}
    return {k: np.asarray(v) for k, v in out.items()}


def torch_arrays(params: dict[str, Any], alphas: Any, grad: bool = False) -> dict[str, np.ndarray]:
    """The same arrays of the torch model (its values, or with `grad` their gradients)."""
    import torch

    def value(t: Any) -> np.ndarray:
        return (t.grad if grad else t).detach().numpy().copy()

    ws = torch.stack([t.grad if grad else t for t in params["ws"]]).detach().numpy().copy()
    return {
        "alpha": value(alphas),
        "embedding": value(params["embedding"]),
        "w0": value(params["w0"]),
        "ws": ws,
    }


def max_rel_diff(a: dict, b: dict, scale: dict) -> dict[str, float]:
    """Per array, max |a - b| over max |scale| (3 significant digits)."""
    out = {}
    for k in a:
        rel = np.max(np.abs(a[k] - b[k])) / max(float(np.max(np.abs(scale[k]))), 1e-12)
        out[k] = float(f"{rel:.3g}")
    return out


CHECK_STEPS = 2
"""Search steps the check takes in both implementations before comparing their states."""

STEP_TOLERANCE = {"alpha": 1e-2}
"""Largest difference of the stepped arrays over their largest move (1e-3 for others).
Adam's first step moves an alpha by lr g / (|g| + 1e-8); where the alpha's gradient and
its weight decay all but cancel (|g| about 1e-8, measured), float noise in g moves it by
a visible part of lr in either implementation."""


def run_check(args: argparse.Namespace) -> dict:
    """nasax (its search path) against the torch model holding nasax's initial weights and
    alphas, dropout off, BN on the batch: the loss of one training window from a zero state
    and its gradients, then first-order search steps (TAR off on the torch side, as
    nasax's search step has none) and the alphas and weights it leaves."""
    import jax
    import torch

    from nasax.search.language import ARCH_STREAM, WEIGHT_STREAM, window_input
    from nasax.search.strategy import FunctionalSupernet

    args = argparse.Namespace(**{**vars(args), "order": 1})
    setup, strategy, state = nasax_search(args, NO_DROPOUT)
    if tuple(setup.space.ops) != PRIMITIVES or setup.space.n_nodes != STEPS:
        raise AssertionError(f"nasax's space {setup.space.ops} is not the reference's")
    net = FunctionalSupernet.create(setup)
    weight, arch = token_streams(args)
    train = nasax_windows(weight, WEIGHT_STREAM, args.bptt, args.pad)
    val = nasax_windows(arch, ARCH_STREAM, args.bptt, args.pad)
    x = window_input(train[0], jax.random.PRNGKey(args.seed), True)

    def loss_fn(params: Any, arch: Any) -> jax.Array:
        return net.loss(params, state.batch_stats, arch, x, train[0]["label"])[0]

    loss_n, (grad_params, grad_arch) = jax.value_and_grad(loss_fn, argnums=(0, 1))(
        state.params, state.arch
    )
    grads_n = {**nasax_arrays(grad_arch), **nasax_arrays(grad_params)}
    params, alphas = torch_start(state)
    train_t, val_t = torch_windows(weight, args.bptt), torch_windows(arch, args.bptt)
    hidden = torch.zeros(args.batch, args.hidden)
    inputs, targets = train_t[0]
    log_prob, _, _ = torch_lm(params, alphas, TorchBN(args.hidden), inputs, hidden, NO_DROPOUT)
    loss_t = torch.nn.functional.nll_loss(log_prob.view(-1, args.vocab), targets.reshape(-1))
    loss_t.backward()
    grads_t = torch_arrays(params, alphas, grad=True)
    grads = max_rel_diff(grads_n, grads_t, grads_t)

    step = jax.jit(strategy.step)
    start = torch_start(state)
    before = torch_arrays(*start)
    search = TorchSearch(args, Protocol(tar=0.0, dropouts=NO_DROPOUT), start)
    for k in range(CHECK_STEPS):  # the second step reads the carried states, Adam's moments
        state, _ = step(state, train[k], val[k])
        search.step(train_t[k], val_t[k], reset=k == 0)
    stepped_n = {**nasax_arrays(state.arch), **nasax_arrays(state.params)}
    stepped_t = torch_arrays(search.params, search.alphas)
    moved = {k: stepped_t[k] - before[k] for k in before}
    steps = max_rel_diff(stepped_n, stepped_t, moved)
    tolerance = {k: STEP_TOLERANCE.get(k, 1e-3) for k in steps}

    loss_t = float(loss_t.detach())
    diff = abs(float(loss_n) - loss_t)
    return {
        "bench": BENCH,
        "impl": "check",
        "loss_nasax": float(loss_n),
        "loss_torch": loss_t,
        "loss_diff": diff,
        "grad_max_rel_diff": grads,
        "step_max_rel_diff": steps,
        "ok": diff < 1e-4
        and max(grads.values()) < 1e-3
        and all(steps[k] < tolerance[k] for k in steps),
        "embed": args.embed,
        "hidden": args.hidden,
        "batch": args.batch,
        "bptt": args.bptt,
        "vocab": args.vocab,
        "pad": args.pad,
        **versions("jax", "torch"),
    }


# ------------------------------------------------------------------ alternation

FORWARDED = ("embed", "hidden", "batch", "bptt", "vocab", "steps", "warmup", "order")
FORWARDED += ("hessian", "threads", "seed", "pad")
"""The options a measurement's own process is given (all but --impl, --repeats, --check)."""


def child_argv(args: argparse.Namespace, impl: str) -> list[str]:
    """This script's command line for one measurement of `impl`."""
    argv = [sys.executable, os.path.abspath(__file__), "--impl", impl]
    for name in FORWARDED:
        argv += [f"--{name}", str(getattr(args, name))]
    return argv


def run_both(args: argparse.Namespace) -> None:
    """nasax, torch, nasax, torch, ... each in its own process; then the median ratio."""
    speeds: dict[str, list[float]] = {"nasax": [], "torch": []}
    for _ in range(args.repeats):
        for impl in speeds:
            done = subprocess.run(
                child_argv(args, impl), stdout=subprocess.PIPE, text=True, check=True
            )
            line = [s for s in done.stdout.splitlines() if s.startswith("{")][-1]
            print(line, flush=True)
            speeds[impl].append(json.loads(line)["tokens_per_sec"])
    medians = {impl: statistics.median(v) for impl, v in speeds.items()}
    print(
        json.dumps(
            {
                "bench": BENCH,
                "impl": "ratio",
                "nasax_over_torch_tokens_per_sec": round(medians["nasax"] / medians["torch"], 3),
                "nasax_tokens_per_sec_median": round(medians["nasax"], 1),
                "torch_tokens_per_sec_median": round(medians["torch"], 1),
                "repeats": args.repeats,
                "order": args.order,
            }
        ),
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--impl", choices=("nasax", "torch", "both"), default="both")
    ap.add_argument("--embed", type=int, default=300)
    ap.add_argument("--hidden", type=int, default=300)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--bptt", type=int, default=35)
    ap.add_argument("--vocab", type=int, default=65, help="65: Tiny Shakespeare's characters")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--order", type=int, choices=(1, 2), default=1)
    ap.add_argument(
        "--hessian",
        choices=("exact", "finite_difference"),
        default="exact",
        help="nasax at order 2 (the reference takes finite differences)",
    )
    ap.add_argument("--repeats", type=int, default=2, help="--impl both: runs of each")
    ap.add_argument("--threads", type=int, default=None, help="default: all cores")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--pad",
        choices=("bucket", "none"),
        default="bucket",
        help="nasax windows padded as its search pads them (a multiple of 8 steps) or not",
    )
    ap.add_argument("--check", action="store_true", help="compare the two models and exit")
    args = ap.parse_args(argv)
    if args.embed != args.hidden:
        ap.error("the decoder is tied to the embedding: --embed must equal --hidden")
    if args.steps < 1:
        ap.error("--steps must be at least 1")

    cores = sorted(os.sched_getaffinity(0))
    args.threads = args.threads or len(cores)
    if args.threads < len(cores):  # before JAX or torch start their thread pools
        os.sched_setaffinity(0, cores[: args.threads])

    if args.check:
        result = run_check(args)
        print(json.dumps(result), flush=True)
        sys.exit(0 if result["ok"] else 1)
    if args.impl == "both":
        run_both(args)
        return
    result = run_nasax(args) if args.impl == "nasax" else run_torch(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
