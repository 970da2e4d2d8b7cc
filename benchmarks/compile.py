"""Compile-time figures of nasax (block and fused execution) as one JSON line.

Each case runs in its own process, with an empty on-disk compilation cache unless it
measures the warm cache, so no case profits from another:

- `cli`: `nasax search darts_digits` (or `--config`) cold (empty cache), then warm:
  compile seconds, wall seconds, seconds from the process start to the first step.
- `digits`, `paper`: one first-order DARTS search step at the digits config (C8, 5 cells,
  batch 64, 8x8x1) and the paper config (C16, 8 cells, batch 64, 32x32x3, `remat: full`
  as `darts_cifar10` sets it), per execution:
  compile seconds, step milliseconds, peak RSS.
- `second_order`: exact second-order DARTS at both configs (block execution).
- `retrain`: one DARTS_V2 retraining step, C36, 20 cells, batch 96 (block execution).

    python benchmarks/compile.py --cases cli digits --executions blocks fused

The paper config in fused execution takes about 10 minutes and 15 GB to compile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "digits": ["--channels", "8", "--layers", "5", "--batch", "64", "--image", "8",
               "--in-channels", "1"],
    # remat full, as configs/darts_cifar10.yaml sets it: with `auto` (convs) exact second
    # order at this size ran out of 24 GB (JAX 0.12).
    "paper": ["--channels", "16", "--layers", "8", "--batch", "64", "--image", "32",
              "--set", "run.remat=full"],
}  # fmt: skip


def run_json(cmd: list[str], env: dict[str, str]) -> dict:
    """Runs a benchmark script and returns the JSON line it printed last."""
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


def fresh_env(cache: str) -> dict[str, str]:
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache}


def cli_case(execution: str, config: str = "darts_digits") -> dict:
    """Cold and warm `nasax search CONFIG` (darts_digits by default)."""
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = fresh_env(str(Path(tmp) / "cache"))
        for label in ("cold", "warm"):
            out = Path(tmp) / label
            cmd = [
                sys.executable, "-m", "nasax.app.cli", "search", config, "--out", str(out),
                "--set", "run.progress=false", "--set", f"run.execution={execution}",
            ]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(cmd, env=env, capture_output=True, check=True)
            wall = time.perf_counter() - start
            summary = json.loads((out / "summary.json").read_text())
            startup = wall - summary["wall_seconds"]  # interpreter and imports
            figures[label] = {
                "wall_s": round(wall, 1),
                "compile_s": round(summary["compile_seconds"], 1),
                "to_first_step_s": round(startup + summary["seconds_to_first_step"], 1),
                "images_per_sec": round(summary["images_per_sec"], 1),
                "peak_rss_mb": round(summary["peak_rss_mb"]),
                "test_accuracy": summary["test_accuracy"],
            }
    return figures


def step_case(config: str, execution: str, extra: list[str], script: str = "search_step.py"):
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(HERE / script), *CONFIGS.get(config, []), *extra]
        steps = "3" if config == "digits" else "2"  # a paper-config step takes a minute
        out = run_json([*cmd, "--execution", execution, "--warmup", "1", "--steps", steps],
                       fresh_env(tmp))  # fmt: skip
    keep = ("compile_s", "first_step_s", "step_ms", "images_per_sec", "peak_rss_mb",
            "peak_rss_after_compile_mb")  # fmt: skip
    return {k: out[k] for k in keep if k in out}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--cases",
        nargs="+",
        default=["cli", "digits", "paper", "second_order", "retrain"],
        choices=["cli", "digits", "paper", "second_order", "retrain"],
    )
    ap.add_argument("--executions", nargs="+", default=["blocks", "fused"])
    ap.add_argument("--config", default="darts_digits", help="the cli case's search config")
    args = ap.parse_args(argv)
    result: dict = {"bench": "compile"}
    for case in args.cases:
        for execution in args.executions:
            key = f"{case}_{execution}"
            if case == "cli":
                result[key] = cli_case(execution, args.config)
            elif case in CONFIGS:
                result[key] = step_case(case, execution, [])
            elif case == "second_order":
                if execution == "fused" and "blocks" in args.executions:
                    continue  # the fused exact second order does not finish compiling
                for config in CONFIGS:
                    order2 = ["--set", "search.darts.order=2"]
                    result[f"second_order_{config}_{execution}"] = step_case(
                        config, execution, order2
                    )
                    print(json.dumps({"case": case, **result}), file=sys.stderr, flush=True)
            elif case == "retrain":
                result[key] = step_case("retrain", execution, [], script="train_step.py")
        print(json.dumps({"case": case, **result}), file=sys.stderr, flush=True)
    import jax

    result.update(backend=jax.default_backend(), jax=jax.__version__)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
