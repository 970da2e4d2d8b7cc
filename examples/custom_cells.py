"""Your own model around two discovered cells, trained with your own optax loop.

nasax's cells are plain `flax.nnx` modules. This script wraps a normal and a reduction
cell of a genotype (DARTS_V2 by default, or a search run's genotype.json) in a small
network of its own, trains it on scikit-learn's digits with a hand-written loop and
prints the test accuracy.

    python examples/custom_cells.py [--genotype DARTS_V2 | runs/<run>/genotype.json]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

from nasax import DiscreteCell, load_genotype


class TwoCellNet(nnx.Module):
    """conv stem -> normal cell -> reduction cell -> global pool -> linear."""

    def __init__(self, genotype, num_classes: int, rngs: nnx.Rngs) -> None:
        stem = 24
        self.stem = nnx.Conv(1, stem, (3, 3), use_bias=False, rngs=rngs)
        self.stem_bn = nnx.BatchNorm(stem, rngs=rngs)
        self.normal = DiscreteCell(
            genotype, "normal", c_prev_prev=stem, c_prev=stem, channels=8, rngs=rngs
        )
        self.reduce = DiscreteCell(
            genotype,
            "reduce",
            c_prev_prev=stem,
            c_prev=self.normal.out_channels,
            channels=16,
            rngs=rngs,
        )
        self.head = nnx.Linear(self.reduce.out_channels, num_classes, rngs=rngs)

    def __call__(self, x, *, train: bool, rng=None):
        s = self.stem_bn(self.stem(x), use_running_average=not train)
        # A cell reads the outputs of the two cells before it; here the stem feeds both.
        s1 = self.normal(s, s, train=train, drop_path_rate=0.1, rng=rng)
        s2 = self.reduce(s, s1, train=train, drop_path_rate=0.1, rng=rng)
        return self.head(jnp.mean(s2, axis=(1, 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genotype", default="DARTS_V2", help="published name or genotype.json")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    digits = load_digits()
    images = (digits.images[..., None] / 16.0 - 0.5).astype(np.float32) / 0.5
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(args.seed).permutation(len(labels))
    test_idx, train_idx = order[:360], order[360:]

    model = TwoCellNet(load_genotype(args.genotype), num_classes=10, rngs=nnx.Rngs(args.seed))
    schedule = optax.cosine_decay_schedule(0.05, args.steps)
    optimizer = nnx.Optimizer(
        model, optax.chain(optax.clip_by_global_norm(5.0), optax.sgd(schedule, 0.9)), wrt=nnx.Param
    )

    @nnx.jit
    def train_step(model, optimizer, x, y, rng):
        def loss_fn(model):
            logits = model(x, train=True, rng=rng)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def predict(model, x):
        return jnp.argmax(model(x, train=False), axis=-1)

    rng = jax.random.PRNGKey(args.seed)
    batch_rng = np.random.default_rng(args.seed)
    for step in range(args.steps):
        idx = batch_rng.choice(train_idx, args.batch, replace=False)
        loss = train_step(model, optimizer, images[idx], labels[idx], jax.random.fold_in(rng, step))
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}: loss {float(loss):.4f}")

    correct = sum(
        int(jnp.sum(predict(model, images[test_idx[i : i + 120]]) == labels[test_idx[i : i + 120]]))
        for i in range(0, len(test_idx), 120)
    )
    print(f"test accuracy {correct / len(test_idx):.4f}")


if __name__ == "__main__":
    main()
