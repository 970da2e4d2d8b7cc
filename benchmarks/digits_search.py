"""Runs the shipped darts_digits search end to end and prints one JSON line of its figures."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from nasax.core.config import load_config
from nasax.engine.compilation_cache import enable_compilation_cache
from nasax.search.task import run_search


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="darts_digits")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--no-cache", action="store_true", help="measure a cold compile")
    args = ap.parse_args(argv)
    if not args.no_cache:
        enable_compilation_cache()
    config = load_config(args.config, [*args.set, "run.progress=false"])
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_search(config, Path(tmp) / "run")
    out = {
        "bench": f"{config.name}_search",
        "data": config.data.name,
        "epochs": summary["epochs"],
        "steps": summary["steps"],
        "wall_s": round(summary["wall_seconds"], 1),
        "compile_s": round(summary["compile_seconds"], 1),
        "images_per_sec": round(summary["images_per_sec"], 1),
        "test_accuracy": round(summary["test_accuracy"], 4),
        "peak_rss_mb": round(summary["peak_rss_mb"], 1),
    }
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
