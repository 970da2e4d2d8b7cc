"""The `nasax` command: thin argument parsing around importable run functions."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from nasax.errors import NasaxError


def _search(args: argparse.Namespace) -> int:
    from nasax.config import load_config
    from nasax.rundir import default_run_dir
    from nasax.search.loop import run_search

    config = load_config(args.config, args.set)
    run_dir = args.out or default_run_dir(config.run.out_dir, config.name)
    if args.quiet:
        config.run.progress = False
    summary = run_search(config, run_dir, resume=args.resume, overwrite=args.overwrite)
    print(
        f"search finished: test accuracy {summary['test_accuracy']:.4f}, "
        f"{summary['wall_seconds']:.0f} s; genotype in {run_dir}/genotype.json"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nasax", description="Differentiable neural architecture search in JAX."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser("search", help="search a cell with a config")
    search.add_argument("config", help="a config file, or the name of a shipped config")
    search.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set search.epochs=2 (repeatable)",
    )
    search.add_argument("--out", help="run directory (default: <run.out_dir>/<name>-<time>)")
    search.add_argument("--resume", action="store_true", help="continue the run in --out")
    search.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    search.add_argument("--quiet", action="store_true", help="no progress bar")
    search.set_defaults(run=_search)
    return parser


def enable_compilation_cache() -> None:
    """Keeps compiled XLA programs on disk, so a rerun or a resume does not compile again.

    JAX_COMPILATION_CACHE_DIR chooses the folder (default ~/.cache/nasax/jax).
    """
    import jax

    default = Path.home() / ".cache" / "nasax" / "jax"
    jax.config.update(
        "jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR", str(default))
    )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; nasax's own errors print as one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    enable_compilation_cache()
    if getattr(args, "resume", False) and not args.out:
        print("nasax: error: --resume needs --out RUN_DIR", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except NasaxError as e:
        from nasax.runloop import Interrupted

        print(f"nasax: {e}", file=sys.stderr)
        return 130 if isinstance(e, Interrupted) else 2
    except KeyboardInterrupt:
        print("nasax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
