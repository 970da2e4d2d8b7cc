"""Retraining as pure functions over an explicit state: init, one jitted step, evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from nasax.loop.data import Batch
from nasax.loop.runloop import masked_sums
from nasax.train.regularizers import cutout, drop_path_rate

Metrics = dict[str, jax.Array]


class TrainState(NamedTuple):
    """Everything a retraining run needs to continue exactly: weights, BN stats, optimizer,
    and the epochs the schedules span (a scalar, so the run loop can fit the cosine lr
    and the drop-path ramp to a time limit, and a checkpoint resumes with that span)."""

    step: jax.Array
    rng: jax.Array
    params: nnx.State
    batch_stats: nnx.State
    opt: optax.OptState
    epochs: jax.Array


class Regularizers(NamedTuple):
    """The DARTS retraining regularisers; zero turns one off."""

    drop_path: float = 0.0
    auxiliary_weight: float = 0.0
    cutout: int = 0


class Trainer(NamedTuple):
    """Functional access to a discrete network for training and evaluation.

    Attributes:
        graphdef: the network's structure.
        optimizer: optax transformation for the weights, whose lr reads the epochs the
            schedule spans (`update(..., span=)`; `nasax.loop.optim.spanned_weight_optimizer`).
        learning_rate: the weight learning rate by (step, span), as the optimizer's (for
            logging).
        preprocess: preprocess(images, rng, train) -> normalised float images.
        regularizers: drop path, auxiliary loss weight, cutout.
        steps_per_epoch, epochs: the configured sizes; a state's `epochs`, which the lr
            and the drop-path ramp span, starts there and a time limit may lower it.
    """

    graphdef: nnx.GraphDef
    network: Callable[[nnx.Rngs], nnx.Module]
    optimizer: optax.GradientTransformationExtraArgs
    learning_rate: Callable[[jax.Array, jax.Array], jax.Array]
    preprocess: Callable[[jax.Array, jax.Array, bool], jax.Array]
    regularizers: Regularizers
    steps_per_epoch: int
    epochs: int

    @classmethod
    def create(cls, network: Callable[[nnx.Rngs], nnx.Module], **kwargs: Any) -> Trainer:
        """Builds the trainer; the network's structure comes from `eval_shape` (no allocation)."""
        abstract = nnx.eval_shape(lambda: network(nnx.Rngs(0)))
        graphdef, _, _ = nnx.split(abstract, nnx.Param, nnx.BatchStat)
        return cls(graphdef, network, **kwargs)

    def init(self, rng: jax.Array) -> TrainState:
        """Fresh weights from `rng` and the optimizer's state."""
        init_rng, state_rng = jax.random.split(rng)
        _, params, stats = nnx.split(
            self.network(nnx.Rngs(params=init_rng)), nnx.Param, nnx.BatchStat
        )
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            rng=state_rng,
            params=params,
            batch_stats=stats,
            opt=self.optimizer.init(params),
            epochs=jnp.asarray(self.epochs, jnp.int32),
        )

    def module(self, state: TrainState) -> nnx.Module:
        """The network with the weights of `state` (a copy; the state is not aliased)."""
        return nnx.merge(self.graphdef, state.params, state.batch_stats, copy=True)

    def lr(self, state: TrainState) -> jax.Array:
        """The weights' learning rate at `state`'s step, over the epochs it spans."""
        return self.learning_rate(state.step, state.epochs)

    def step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        """One SGD step on a training batch with augmentation and every regulariser."""
        reg = self.regularizers
        rng = jax.random.fold_in(state.rng, state.step)
        aug_rng, cut_rng, drop_rng = jax.random.split(rng, 3)
        x = cutout(self.preprocess(batch["image"], aug_rng, True), cut_rng, reg.cutout)
        spe, epochs = self.steps_per_epoch, self.epochs
        rate = drop_path_rate(state.step, spe, epochs, reg.drop_path, span=state.epochs)
        labels = batch["label"]

        def loss_fn(params: nnx.State) -> tuple[jax.Array, tuple[Metrics, nnx.State]]:
            model = nnx.merge(self.graphdef, params, state.batch_stats, copy=True)
            logits, aux = model(
                x,
                train=True,
                drop_path_rate=rate,
                rng=drop_rng if reg.drop_path > 0 else None,
                return_aux=True,
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            accuracy = (jnp.argmax(logits, -1) == labels).mean()
            metrics = {"train_loss": loss, "train_acc": accuracy}
            total = loss
            if aux is not None and reg.auxiliary_weight > 0:
                # `train_loss` stays the network's cross-entropy; the auxiliary head's is
                # apart, and the objective the weights descend is their weighted sum.
                aux_loss = optax.softmax_cross_entropy_with_integer_labels(aux, labels).mean()
                total = loss + reg.auxiliary_weight * aux_loss
                metrics |= {"aux_loss": aux_loss, "train_objective": total}
            return total, (metrics, nnx.state(model, nnx.BatchStat))

        grads, (metrics, stats) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt = self.optimizer.update(grads, state.opt, state.params, span=state.epochs)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            **metrics,
            "grad_norm": optax.tree.norm(grads),
            "lr": self.lr(state),
            "drop_path_rate": rate,
        }
        new_state = state._replace(step=state.step + 1, params=params, batch_stats=stats, opt=opt)
        return new_state, metrics

    def evaluate(self, state: TrainState, batch: Batch) -> Metrics:
        """Summed loss and correct count over the real examples of a padded batch."""
        x = self.preprocess(batch["image"], state.rng, False)
        logits = self.module(state)(x, train=False)
        return masked_sums(logits, batch["label"], batch["mask"])
