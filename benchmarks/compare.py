"""nasax against the PyTorch reference on this machine: one table, one JSON line.

Runs each benchmark in its own process, one after another (never two at once, so they
do not share the cores), alternating nasax and the reference where both exist, and
reports ratios:

    python benchmarks/compare.py --preset paper --torch-python /path/to/venv/bin/python

Cases: first-order DARTS (nasax and reference), second-order DARTS (nasax exact and
finite-difference, reference), GDAS and PC-DARTS (nasax; compared with nasax's own
first-order step), and the retraining step (DARTS_V2 network). The reference script is
`../shared/bench/torch_darts_ref.py`; it needs `pip install torch==2.13.0`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_REFERENCE = HERE.parent.parent / "shared" / "bench" / "torch_darts_ref.py"

# The reference always builds 3-channel inputs, so both sides use 3 channels.
PRESETS = {
    "paper": {"channels": 16, "layers": 8, "batch": 64, "image": 32},
    "digits": {"channels": 8, "layers": 5, "batch": 64, "image": 8},
}
# What the shipped configs set: darts_cifar10 keeps only each block's inputs (2.3 GB at
# the paper size, at the step time of `convs`); the digits configs use the default.
REMAT = {"paper": "full", "digits": "auto"}
# Retraining networks: retrain_cifar10's (C36, 20 cells, batch 96) and retrain_digits'.
RETRAIN = {
    "paper": ["--config", "retrain_cifar10"],
    "digits": [
        "--config",
        "retrain_digits",
        "--channels",
        "16",
        "--layers",
        "8",
        "--batch",
        "64",
        "--image",
        "8",
        "--in-channels",
        "1",
    ],
}


def cases(preset: str, nasax_py: str, torch_py: str, reference: Path, timing: list[str]):
    """(name, command) pairs in the order they run."""
    shape = [f"--{k}={v}" for k, v in PRESETS[preset].items()]
    search = [nasax_py, str(HERE / "search_step.py"), *shape, "--in-channels=3", *timing]
    search += ["--set", f"run.remat={REMAT[preset]}"]
    ref = [torch_py, str(reference), *shape, *timing]
    return [
        ("torch_order1", [*ref, "--order=1"]),
        ("darts_order1", search),
        ("torch_order2", [*ref, "--order=2"]),
        ("darts_order2_exact", [*search, "--set", "search.darts.order=2"]),
        (
            "darts_order2_fd",
            [
                *search,
                "--set",
                "search.darts.order=2",
                "--set",
                "search.darts.hessian=finite_difference",
            ],
        ),
        ("gdas", [*search, "--strategy=gdas"]),
        (
            "pcdarts",
            [*search, "--strategy=pcdarts", "--set", "search.pcdarts.arch_warmup_epochs=0"],
        ),
        ("retrain", [nasax_py, str(HERE / "train_step.py"), *RETRAIN[preset], *timing]),
    ]


def run(name: str, command: list[str]) -> dict:
    """Runs one benchmark process and returns its JSON line (or the error)."""
    print(f"[compare] {name}: {' '.join(command)}", file=sys.stderr, flush=True)
    proc = subprocess.run(command, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def ratios(res: dict) -> dict:
    """The issue's figures: nasax over the reference, and nasax's strategies over DARTS."""

    def r(a: str, b: str, key: str) -> float | None:
        x, y = res.get(a, {}).get(key), res.get(b, {}).get(key)
        return round(x / y, 3) if x and y else None

    return {
        "order1_speed_vs_torch": r("darts_order1", "torch_order1", "images_per_sec"),
        "order1_memory_vs_torch": r("darts_order1", "torch_order1", "peak_rss_mb"),
        "order2_exact_speed_vs_torch": r("darts_order2_exact", "torch_order2", "images_per_sec"),
        "order2_exact_memory_vs_torch": r("darts_order2_exact", "torch_order2", "peak_rss_mb"),
        "order2_exact_time_vs_order1": r("darts_order2_exact", "darts_order1", "step_ms"),
        "order2_fd_time_vs_order1": r("darts_order2_fd", "darts_order1", "step_ms"),
        "torch_order2_time_vs_order1": r("torch_order2", "torch_order1", "step_ms"),
        "gdas_speedup_vs_order1": r("darts_order1", "gdas", "step_ms"),
        "pcdarts_speedup_vs_order1": r("darts_order1", "pcdarts", "step_ms"),
    }


def table(res: dict) -> str:
    """A markdown table of the per-case figures."""
    rows = ["| case | images/s | ms/step | compile s | peak RSS MB |", "|---|---|---|---|---|"]
    for name, fig in res.items():
        if "error" in fig:
            rows.append(f"| {name} | failed: {fig['error']} | | | |")
            continue
        rows.append(
            f"| {name} | {fig['images_per_sec']} | {fig['step_ms']} | "
            f"{fig.get('compile_s', '-')} | {fig['peak_rss_mb']} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", choices=sorted(PRESETS), default="digits")
    ap.add_argument("--torch-python", default=sys.executable, help="a Python with torch")
    ap.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    ap.add_argument("--only", default="", help="comma-separated case names to run")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    if not args.reference.is_file():
        ap.error(f"no reference script at {args.reference}; pass --reference")
    timing = [f"--warmup={args.warmup}", f"--steps={args.steps}"]
    chosen = {c for c in args.only.split(",") if c}
    res = {}
    for name, command in cases(
        args.preset, sys.executable, args.torch_python, args.reference, timing
    ):
        if chosen and name not in chosen:
            continue
        res[name] = run(name, command)
    print(table(res), file=sys.stderr)
    out = {"bench": "compare_torch", "preset": args.preset, **ratios(res), "cases": res}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
