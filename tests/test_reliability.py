"""Nothing is lost: kill -9 at any moment, SIGTERM, NaN steps, determinism, malformed input."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nasax import DARTS_V2, Genotype
from nasax.app.cli import main
from nasax.core.checkpoint import Checkpoints
from nasax.core.errors import ConfigError, GenotypeError
from nasax.search.options import load_config, validate_config
from nasax.train import task as train_task
from tests.conftest import TINY_TRAIN, kill_at_step, search_args, train_args


def last_checkpoint_arrays(run: Path) -> tuple[int, dict[str, np.ndarray]]:
    checkpoints = Checkpoints(run / "checkpoints")
    try:
        step = checkpoints.latest_step()
        return step, checkpoints.restore_flat(step)[0]
    finally:
        checkpoints.close()


def metrics_without_timing(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "images_per_sec"} for r in records]


def checkpoint_steps(run: Path) -> int:
    """The highest complete checkpoint step (a folder being written has a tmp suffix)."""
    folder = run / "checkpoints"
    steps = [int(p.name) for p in folder.glob("*") if p.name.isdigit()] if folder.is_dir() else []
    return max(steps, default=0)


def assert_same_run(a: Path, b: Path) -> None:
    step_a, arrays_a = last_checkpoint_arrays(a)
    step_b, arrays_b = last_checkpoint_arrays(b)
    assert step_a == step_b
    assert arrays_a.keys() == arrays_b.keys()
    for key in arrays_a:
        np.testing.assert_array_equal(arrays_a[key], arrays_b[key], err_msg=key)
    assert metrics_without_timing(a) == metrics_without_timing(b)


@pytest.fixture(scope="module")
def reference(finished_training) -> Path:
    """The session's finished tiny retraining (read only)."""
    return finished_training


def test_kill_9_at_any_moment_loses_nothing(reference, tiny_npz, tmp_path):
    """SIGKILL a retraining that checkpoints after every step, at random moments (also in
    the middle of checkpoint writes), resume each time: the end equals an uninterrupted run."""
    out = tmp_path / "killed"
    every_step = ["--set", "run.checkpoint_minutes=1e-9", "--quiet"]
    cmd = [sys.executable, "-m", "nasax.app.cli", *train_args(tiny_npz, out, *every_step)]
    rng = random.Random(0)
    kills, done = 0, 0
    for _ in range(4):
        resume = ["--resume"] if done else ["--overwrite"]
        proc = subprocess.Popen([*cmd, *resume], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while proc.poll() is None and checkpoint_steps(out) <= done:  # wait for progress
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.communicate()[1]
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        # What a crash leaves: whole JSON files and a loadable last checkpoint.
        for name in ("genotype.json", "summary.json"):
            if (out / name).exists():
                json.loads((out / name).read_text())
        done = Checkpoints(out / "checkpoints").latest_step() or 0
        if done:
            assert last_checkpoint_arrays(out)[0] == done
    else:
        assert main(train_args(tiny_npz, out, "--resume", "--quiet")) == 0
    assert kills >= 1
    assert not [p for p in out.rglob("*") if "tmp" in p.name]
    assert_same_run(reference, out)


def test_sigterm_saves_a_checkpoint_and_exits_143(
    reference, tiny_npz, tmp_path, monkeypatch, capsys
):
    signal_before_step(monkeypatch, train_task, 3, signal.SIGTERM)
    out = tmp_path / "terminated"
    assert main(train_args(tiny_npz, out)) == 143
    err = capsys.readouterr().err.strip()
    assert "SIGTERM" in err and "--resume" in err and len(err.splitlines()) == 1
    monkeypatch.undo()
    assert main(train_args(tiny_npz, out, "--resume")) == 0
    assert_same_run(reference, out)


def signal_before_step(monkeypatch, task_module, step: int, signum: int, streams: int = 1):
    """Sends `signum` to this process as the batch of step `step` (from 1) is handed to
    the loop, so the loop stops right after that step. A step takes one batch from each
    of `streams` prefetched streams (a search: the weights' and the architecture's)."""
    real_prefetch, count = task_module.prefetch, [0]

    def prefetch_then_signal(it, size=2, **kw):
        for batch in real_prefetch(it, size, **kw):
            count[0] += 1
            if count[0] == (step - 1) * streams + 1:
                os.kill(os.getpid(), signum)
            yield batch

    monkeypatch.setattr(task_module, "prefetch", prefetch_then_signal)


# The tiny retraining runs 3 epochs of 4 steps: every step, hence the first, middle and
# last step of an epoch and the run's last step.
@pytest.mark.parametrize("step", range(1, 13))
def test_sigint_at_any_step_resumes_to_the_uninterrupted_run(
    reference, tiny_npz, tmp_path, monkeypatch, capsys, step
):
    out = tmp_path / "interrupted"
    signal_before_step(monkeypatch, train_task, step, signal.SIGINT)
    assert main(train_args(tiny_npz, out)) == 130
    err = capsys.readouterr().err.strip()
    assert f"stopped by SIGINT at epoch {(step - 1) // 4 + 1} step {step};" in err
    assert len(err.splitlines()) == 1
    assert Checkpoints(out / "checkpoints").latest_step() == step
    monkeypatch.undo()
    assert main(train_args(tiny_npz, out, "--resume")) == 0
    assert_same_run(reference, out)
    assert not list((out / "checkpoints").glob("*.replaced"))


def test_sigint_at_an_epochs_last_search_step_resumes_to_the_uninterrupted_run(
    finished_run, tiny_npz, tmp_path, monkeypatch, capsys
):
    """The search of the report: stopped on the last step of its first epoch (4 steps),
    where the resume saves that step again once the epoch's phase has run."""
    from nasax.search import task as search_task

    out = tmp_path / "interrupted"
    signal_before_step(monkeypatch, search_task, 4, signal.SIGINT, streams=2)
    assert main(search_args(tiny_npz, out)) == 130
    assert "stopped by SIGINT at epoch 1 step 4;" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(search_args(tiny_npz, out, "--resume")) == 0
    assert_same_run(finished_run, out)
    assert json.loads((out / "genotype.json").read_text()) == json.loads(
        (finished_run / "genotype.json").read_text()
    )


@pytest.mark.parametrize("step", [1, 6, 8, 12])
def test_kill_9_at_a_step_resumes_to_the_uninterrupted_run(reference, tiny_npz, tmp_path, step):
    """SIGKILL as step `step` starts (the first step; the middle and the last step of the
    second epoch; the run's last step), checkpointing after every step: the resume ends
    where an uninterrupted run ends."""
    out = tmp_path / "killed"
    every_step = ["--set", "run.checkpoint_minutes=1e-9", "--quiet"]
    cmd = kill_at_step(
        tmp_path, "nasax.train.task", step, [*train_args(tiny_npz, out, *every_step)]
    )
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert (Checkpoints(out / "checkpoints").latest_step() or 0) == step - 1
    resume = "--resume" if step > 1 else "--overwrite"
    assert main(train_args(tiny_npz, out, *every_step, resume)) == 0
    assert_same_run(reference, out)


def test_a_replaced_checkpoint_comes_back_if_its_replacement_never_completed(tmp_path):
    """A save of a step that exists sets the old one aside; a kill before the new one is
    complete leaves the aside, which the next opening puts back (or drops, if complete)."""
    from nasax.core.checkpoint import REPLACED

    folder = tmp_path / "checkpoints"
    checkpoints = Checkpoints(folder)
    checkpoints.save(3, {"w": np.zeros(2, np.float32)}, {"epoch": 1})
    checkpoints.save(3, {"w": np.ones(2, np.float32)}, {"epoch": 2})
    assert checkpoints.restore_flat(3)[1]["epoch"] == 2
    checkpoints.close()
    (folder / "3").rename(folder / f"3{REPLACED}")  # killed after setting it aside
    (folder / "3.orbax-checkpoint-tmp-1").mkdir()  # with the new one half written
    checkpoints = Checkpoints(folder)
    flat, meta = checkpoints.restore_flat()
    assert meta["epoch"] == 2 and flat["w"].tolist() == [1.0, 1.0]
    checkpoints.close()
    assert sorted(p.name for p in folder.iterdir()) == ["3"]


def test_same_seed_gives_the_same_run_and_another_seed_does_not(reference, tiny_npz, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    assert main(train_args(tiny_npz, again)) == 0
    assert_same_run(reference, again)
    assert main(train_args(tiny_npz, other, "--set", "seed=1")) == 0
    assert metrics_without_timing(other) != metrics_without_timing(reference)
    summary = json.loads((again / "summary.json").read_text())
    assert summary["seed"] == 0


EXPLODE = ["--set", "optim.weights.lr=1e12", "--set", "optim.weights.grad_clip=null"]


def test_non_finite_loss_stops_with_the_step_and_keeps_only_finite_checkpoints(
    tiny_npz, tmp_path, capsys
):
    out = tmp_path / "nan"
    assert main(train_args(tiny_npz, out, *EXPLODE)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "became nan at step" in err or "became inf at step" in err
    assert "optim.weights.lr" in err and "run.nonfinite=skip" in err
    if Checkpoints(out / "checkpoints").latest_step() is not None:
        _, arrays = last_checkpoint_arrays(out)
        assert all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f")


def test_skip_mode_skips_non_finite_steps_and_finishes(tiny_npz, tmp_path):
    out = tmp_path / "skip"
    assert main(train_args(tiny_npz, out, *EXPLODE, "--set", "run.nonfinite=skip")) == 0
    steps = [r for r in metrics_without_timing(out) if r["kind"] == "train"]
    assert sum(r["skipped"] for r in steps) > 0
    _, arrays = last_checkpoint_arrays(out)
    assert all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f")


def test_resume_without_a_complete_checkpoint_says_so(tiny_npz, tmp_path, capsys):
    out = tmp_path / "empty"
    (out / "checkpoints" / "3.orbax-checkpoint-tmp-123").mkdir(parents=True)
    config = load_config("retrain_digits", [*TINY_TRAIN, f"data.name=npz:{tiny_npz}"])
    config.train.genotype = "DARTS_V2"
    (out / "config.yaml").write_text(config.to_yaml())
    (out / "genotype.json").write_text(DARTS_V2.to_json())
    assert main(train_args(tiny_npz, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "no complete checkpoint" in err and "--overwrite" in err


# ---------------------------------------------------------------- malformed input, at random

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
SECTION_KEYS = {
    "data": ["name", "data_dir", "num_classes", "augment"],
    "model": ["space", "channels", "layers", "stem_multiplier"],
    "search": ["strategy", "epochs", "batch_size", "train_portion", "darts", "discretizer"],
    "train": ["genotype", "epochs", "batch_size", "drop_path", "cutout", "auxiliary"],
    "optim": ["weights", "arch"],
    "run": ["out_dir", "log_every", "checkpoint_minutes", "nonfinite", "progress"],
}
sections = st.sampled_from(sorted(SECTION_KEYS)).flatmap(
    lambda name: st.tuples(
        st.just(name),
        json_values
        | st.dictionaries(
            st.sampled_from([*SECTION_KEYS[name], "bogus"]), json_values, min_size=1, max_size=3
        ),
    )
)
configs = st.lists(
    sections | st.tuples(st.sampled_from(["name", "seed", "extra"]), json_values),
    min_size=1,
    max_size=4,
).map(dict)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_malformed_configs_give_one_line_naming_the_key(data):
    try:
        validate_config(data, "cfg.yaml")
    except ConfigError as e:
        message = str(e)
        assert "\n" not in message and message.startswith("cfg.yaml: ")
        assert any(key in message for key in data), message


def mutate(draw, value):
    """Replaces one random place in a JSON-like value with another random value."""
    if isinstance(value, dict) and value and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        return {**value, key: mutate(draw, value[key])}
    if isinstance(value, list) and value and draw(st.booleans()):
        i = draw(st.integers(0, len(value) - 1))
        return [*value[:i], mutate(draw, value[i]), *value[i + 1 :]]
    return draw(
        json_values
        | st.integers(-3, 9)
        | st.sampled_from(["sep_conv_3x3", "none", "conv_7x7"])
        | st.just([])
    )


@st.composite
def malformed_genotypes(draw):
    data = DARTS_V2.to_dict()
    for _ in range(draw(st.integers(1, 3))):
        data = mutate(draw, data)
    return data


@settings(max_examples=400, deadline=None)
@given(malformed_genotypes())
def test_malformed_genotypes_give_one_line_naming_the_field(data):
    try:
        Genotype.from_dict(data).validate()
    except GenotypeError as e:
        message = str(e)
        assert "\n" not in message
        fields = ("space", "normal", "reduce", "keys", "genotype must be")
        assert any(f in message for f in fields), message


def test_a_skipped_step_advances_the_counter_of_every_state_kind():
    """A skipped step keeps the weights but moves the step counter on, so the next step
    draws new random numbers; ENAS keeps its counter inside the supernet's state."""
    import jax.numpy as jnp

    from nasax.loop.runloop import skip_nonfinite_steps
    from nasax.search.enas import EnasState
    from nasax.search.strategy import SupernetState

    net = SupernetState(jnp.asarray(4), jnp.zeros(2), {"w": jnp.ones(3)}, {}, {}, (), (), 5)
    for state in (net, EnasState(net, {}, (), jnp.asarray(0.0), jnp.asarray(0))):

        def exploding(state, batch):
            inner = state.net if isinstance(state, EnasState) else state
            inner = inner._replace(step=inner.step + 1, params={"w": jnp.full(3, jnp.nan)})
            new = state._replace(net=inner) if isinstance(state, EnasState) else inner
            return new, {"loss": jnp.asarray(jnp.nan)}

        kept, metrics = skip_nonfinite_steps(exploding)(state, {})
        assert float(metrics["skipped"]) == 1.0
        assert int(kept.step) == 5
        inner = kept.net if isinstance(kept, EnasState) else kept
        np.testing.assert_array_equal(inner.params["w"], np.ones(3))


def test_a_process_near_the_memory_map_limit_drops_its_compiled_programs():
    """Past half of Linux's maps per process, compiled programs are dropped (they reload
    from the disk cache) instead of crashing the interpreter at the limit."""
    import jax

    from nasax.engine.compilation_cache import release_if_crowded

    f = jax.jit(lambda x: x + 1)
    f(1.0)
    assert f._cache_size() == 1
    assert release_if_crowded(share=2.0) is False and f._cache_size() == 1
    assert release_if_crowded(share=0.0) is True and f._cache_size() == 0
    assert f(1.0) == 2.0
