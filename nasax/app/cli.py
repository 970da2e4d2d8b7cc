"""The `nasax` command: thin argument parsing around importable run functions."""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasax.core.errors import NasaxError, StorageError
from nasax.engine.compilation_cache import enable_compilation_cache

if TYPE_CHECKING:
    from nasax.core.config import RunConfig


def initialize(run: RunConfig) -> None:
    """Joins a multi-host job if the config asks (before any JAX computation)."""
    from nasax.core.processes import initialize as join

    join(run)


def _search(args: argparse.Namespace) -> int:
    from nasax.core.rundir import default_run_dir
    from nasax.search.options import load_config
    from nasax.search.task import run_search

    config = load_config(args.config, args.set)
    initialize(config.run)
    run_dir = args.out = args.out or default_run_dir(config.run.out_dir, config.name)
    if args.quiet:
        config.run.progress = False
    summary = run_search(config, run_dir, resume=args.resume, overwrite=args.overwrite)
    print(
        f"search finished: test accuracy {summary['test_accuracy']:.4f}, "
        f"{summary['wall_seconds']:.0f} s; genotype in {run_dir}/genotype.json\n"
        f"  {summary['genotype_text']}"
    )
    if summary.get("stopped_early"):
        print(f"  stopped at the time limit ({summary['time_limit']:.0f} s) with the latest cell")
    return 0


def _train(args: argparse.Namespace) -> int:
    from nasax.core.config import read_config
    from nasax.core.config import validate_config as validate_core
    from nasax.search.options import validate_config
    from nasax.train.language import trains_language
    from nasax.train.task import run_train

    data, source = read_config(args.config, args.set)
    if trains_language(validate_core(data, source), args.genotype):
        return _train_language(args, data, source)
    config = validate_config(data, source)
    run_dir = _start_training(config, args)
    summary = run_train(
        config, run_dir, genotype=args.genotype, resume=args.resume, overwrite=args.overwrite
    )
    print(
        f"training finished: test accuracy {summary['test_accuracy']:.4f}, "
        f"{summary['params']:,} parameters, {summary['wall_seconds']:.0f} s; run in {run_dir}"
    )
    return 0


def _start_training(config: Any, args: argparse.Namespace) -> Path:
    """What `nasax train` settles before a run: the runtime, the genotype and progress the
    flags give, and the run directory (also kept in `args.out`)."""
    from nasax.core.rundir import default_run_dir

    initialize(config.run)
    if args.genotype:
        config.train.genotype = args.genotype
    run_dir = args.out = args.out or default_run_dir(config.run.out_dir, config.name)
    if args.quiet:
        config.run.progress = False
    return run_dir


def _train_language(args: argparse.Namespace, data: dict[str, Any], source: str) -> int:
    """`nasax train` of a recurrent genotype: a language model on text data."""
    from nasax.core.config import validate_config
    from nasax.train.language import resolve_language_config, run_language

    config = resolve_language_config(validate_config(data, source), source)
    run_dir = _start_training(config, args)
    summary = run_language(
        config, run_dir, genotype=args.genotype, resume=args.resume, overwrite=args.overwrite
    )
    bpc = summary["test_bpc"]
    print(
        f"training finished: {summary['test_split']} perplexity {summary['test_ppl']:.2f}"
        + (f", {bpc:.4f} bits per character" if bpc is not None else "")
        + f", {summary['params']:,} parameters, {summary['wall_seconds']:.0f} s; run in {run_dir}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from nasax.train.evaluate import evaluate_run
    from nasax.train.language import evaluate_language_run, is_language_run

    if is_language_run(args.run_dir):
        found = evaluate_language_run(args.run_dir)
        state = "finished" if found["finished"] else "interrupted"
        bpc = found["test_bpc"]
        print(
            f"{args.run_dir} ({state} after {found['epochs_done']} of {found['epochs']} epochs, "
            f"step {found['step']}): {found['split']} perplexity {found['test_ppl']:.2f}"
            + (f", {bpc:.4f} bits per character" if bpc is not None else "")
            + f", loss {found['test_loss']:.4f}, next-token accuracy "
            f"{found['test_accuracy']:.4f} on {found['tokens']:,} tokens"
        )
    else:
        found = evaluate_run(args.run_dir, progress=not args.quiet)
        state = "finished" if found["finished"] else "interrupted"
        print(
            f"{args.run_dir} ({state} after {found['epochs_done']} of {found['epochs']} epochs, "
            f"step {found['step']}): "
            f"test top-1 {found['test_accuracy']:.4f}, loss {found['test_loss']:.4f} "
            f"on {found['examples']} images"
        )
    if args.out:
        _write_json(args.out, found)
        print(f"wrote {args.out}")
    return 0


def _write_json(path: str, figures: dict[str, Any]) -> None:
    """`figures` as a JSON file, written atomically (NumPy scalars as Python numbers)."""
    from nasax.core.io import atomic_write_json

    atomic_write_json(path, {k: v.item() if hasattr(v, "item") else v for k, v in figures.items()})


def _export(args: argparse.Namespace) -> int:
    from nasax.train.export import export_run

    out = export_run(args.run_dir, args.out, overwrite=args.overwrite, progress=not args.quiet)
    print(f"exported to {out}; load with nasax.load_model({str(out)!r})")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from nasax.train.generate import generate_text

    out = generate_text(
        args.run_dir, args.prompt, args.length, temperature=args.temperature, seed=args.seed
    )
    if args.out:
        from nasax.core.io import atomic_write_text

        atomic_write_text(args.out, out.joined)
        print(f"wrote {args.out}")
    else:
        print(out.joined)
    return 0


def _cost_line(genotype: Any, source: str) -> str:
    """The cell's cost: a budgeted search's figures from the summary.json beside it, else
    parameters and FLOPs at the space's published network on 32x32x3, 10 classes."""
    import json

    from nasax.search.costs import format_cost

    summary = Path(source).with_name("summary.json")
    found = Path(source).is_file() and summary.is_file()
    cost = json.loads(summary.read_text()).get("cost") if found else None
    if cost:
        d = cost["deploy"]
        where = f"C{d['channels']} L{d['layers']} {d['image_size'][0]}x{d['image_size'][1]}"
        measured = cost.get("latency_ms_measured")
        latency = f", {measured:.2f} ms measured at batch {cost['latency_batch_size']}"
        return (
            f"cost at {where}: {format_cost('params', cost['params'])}, "
            f"{format_cost('flops', cost['flops'])} per image"
            + (latency if measured is not None else "")
            + f" (budget: {cost['metric']} <= {cost['target']:g})"
        )
    from nasax.search.profiling import Deploy, profile_space
    from nasax.supernet.skeletons import skeleton_of

    space = genotype.resolve_space()
    try:
        genotype.validate(space, searched=True)
    except NasaxError as e:
        return f"cost: not priced ({e})"
    defaults = skeleton_of(space).discrete_network.defaults
    deploy = Deploy(defaults["channels"], defaults["layers"], (32, 32), 3, 10)
    profile = profile_space(space, deploy, [])
    params = profile.table("params").of_genotype(genotype, space)
    flops = profile.table("flops").of_genotype(genotype, space)
    return (
        f"cost at C{deploy.channels} L{deploy.layers} 32x32x3, 10 classes: "
        f"{format_cost('params', params)}, {format_cost('flops', flops)} per image"
    )


def _show(args: argparse.Namespace) -> int:
    from nasax.core.io import atomic_write_text
    from nasax.supernet.drawing import (
        GraphvizMissing,
        draw_genotype,
        genotype_dot,
        genotype_text,
    )
    from nasax.supernet.genotypes import load_genotype

    genotype = load_genotype(args.genotype)
    print(genotype_text(genotype))
    print(_cost_line(genotype, args.genotype))
    if args.out:
        try:
            print(f"drew the cells to {draw_genotype(genotype, args.out)}")
        except GraphvizMissing as e:
            dot_path = Path(args.out).with_suffix(".dot")
            atomic_write_text(dot_path, genotype_dot(genotype))
            print(f"nasax: {e}; wrote the Graphviz text to {dot_path} instead", file=sys.stderr)
            print(genotype_dot(genotype), end="")
    return 0


def _profile(args: argparse.Namespace) -> int:
    import time

    from nasax.loop.data import load_dataset
    from nasax.search.budget import deploy_of
    from nasax.search.options import load_config
    from nasax.search.profiling import profile_space
    from nasax.supernet.spaces import get_space

    config = load_config(args.config, args.set)
    data = config.data
    dataset = load_dataset(data.name, data.data_dir, data.num_classes)
    deploy = deploy_of(config, dataset)
    space = get_space(config.model.space)
    tick = time.perf_counter()
    profile = profile_space(space, deploy, sorted({1, args.batch}), cache=not args.fresh)
    profile.save(args.out)
    h, w = deploy.image_size
    latency = ", ".join(
        f"batch {b}: fixed part {profile.table('latency', b).fixed:.2f} ms"
        for b in profile.batch_sizes
    )
    print(
        f"profiled space {space.name!r} at C{deploy.channels} L{deploy.layers} {h}x{w} on "
        f"{profile.device['kind']} in {time.perf_counter() - tick:.0f} s ({latency}); "
        f"wrote {args.out}"
    )
    return 0


def _score(args: argparse.Namespace) -> int:
    import time

    import jax

    from nasax.core.errors import ConfigError
    from nasax.loop.data import load_dataset
    from nasax.search.options import load_config
    from nasax.search.scoring import (
        proxy_list,
        read_cells,
        sample_cells,
        score_batch,
        score_cells,
        scoring_network,
    )
    from nasax.supernet.spaces import get_space

    if args.list:
        from nasax.search.proxies import get_proxy, proxy_names

        for name in proxy_names():
            proxy = get_proxy(name)
            kind = "cost table" if proxy.table else "float64" if proxy.x64 else "float32"
            print(f"{name:<10} {kind:<10} {proxy.paper}")
        return 0
    if args.config is None:
        raise ConfigError("nasax score: give a config (a file, or a shipped config's name)")
    if (args.sample is None) == (args.cells is None):
        raise ConfigError("nasax score: give --sample N or --cells FILE (one of them)")
    if args.out is None:
        raise ConfigError("nasax score: give --out FILE.jsonl for the scores")
    proxies = proxy_list(args.proxy)
    config = load_config(args.config, args.set)
    data, model = config.data, config.model
    dataset = load_dataset(data.name, data.data_dir, data.num_classes)
    space = get_space(model.space)
    cells = (
        read_cells(args.cells, space) if args.cells else sample_cells(space, args.sample, args.seed)
    )
    net = scoring_network(
        space,
        channels=model.channels,
        layers=model.layers,
        image_shape=dataset.image_shape,
        num_classes=dataset.num_classes,
        key=jax.random.PRNGKey(args.seed),
        stem_multiplier=model.stem_multiplier,
    )
    batch = score_batch(dataset, args.batch, args.seed)
    last = [0.0]

    def report(done: int, total: int, rate: float) -> None:
        if not args.quiet and (time.monotonic() - last[0] > 10 or done == total):
            last[0] = time.monotonic()
            print(f"scored {done}/{total} cells, {rate:.2f} cells/s", flush=True)

    tick = time.perf_counter()
    scored = score_cells(
        net, cells, proxies, batch, jax.random.PRNGKey(args.seed), Path(args.out), report=report
    )
    print(
        f"scored {scored} cells ({len(cells) - scored} were already in {args.out}) with "
        f"{', '.join(proxies)} in {time.perf_counter() - tick:.0f} s; wrote {args.out}"
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from nasax.app.report import write_report

    print(f"wrote {write_report(args.run_dir, args.out)}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from nasax.app.tune import run_tune
    from nasax.search.options import load_config

    config = load_config(args.config, args.set)
    initialize(config.run)
    if args.trials is not None and config.tune is not None:
        config.tune.trials = args.trials
    out = args.out = args.out or Path(config.run.out_dir) / f"{config.name}-tune"
    if args.quiet:
        config.run.progress = False
    summary = run_tune(config, out, storage=args.storage)
    best = summary["best"]
    if best is None:
        print(f"tuning finished without a completed trial; see {out}/tune_summary.json")
        return 1
    print(
        f"tuning finished: best trial {best['number']} with {summary['metric']} "
        f"{best['value']:.4f}; its config is {out}/best_config.yaml"
    )
    return 0


def _add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set search.epochs=2 (repeatable)",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a config file, or the name of a shipped config")
    _add_set_option(parser)
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="the run directory to write (default: <run.out_dir>/<name>-<time>)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def version_text() -> str:
    """`nasax <version>`, then the versions of the libraries it runs on, as installed
    (nothing is imported); `unknown` for a source tree that was never installed."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    libraries = ", ".join(
        f"{name} {of(name) or '(not installed)'}" for name in ("jax", "jaxlib", "flax", "optax")
    )
    return f"nasax {of('nasax') or 'unknown'}\n{libraries}; Python {platform.python_version()}"


class _VersionAction(argparse.Action):
    """`--version`: prints `version_text()` and exits, as argparse's own does."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nasax", description="Differentiable neural architecture search in JAX."
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print nasax's version and those of jax, jaxlib, flax and optax, and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser("search", help="search a cell with a config")
    _add_run_options(search)
    search.set_defaults(run=_search)

    train = commands.add_parser("train", help="retrain a genotype from scratch")
    _add_run_options(train)
    train.add_argument(
        "--genotype",
        help="genotype.json, a search run directory, or a published name (DARTS_V2)",
    )
    train.set_defaults(run=_train)

    evaluate = commands.add_parser(
        "evaluate", help="test accuracy of a retraining run's latest checkpoint"
    )
    evaluate.add_argument(
        "run_dir", metavar="RUN_DIR", help="a run directory written by nasax train"
    )
    evaluate.add_argument(
        "--out",
        metavar="FILE",
        help="also write the figures to this JSON file (default: print them only)",
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(run=_evaluate)

    export = commands.add_parser(
        "export", help="write a retrained model as a self-contained folder"
    )
    export.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by nasax train")
    export.add_argument("out_dir", nargs="?", help=argparse.SUPPRESS)  # deprecated: use --out
    export.add_argument("--out", metavar="DIR", help="the folder to write (required; new or empty)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    export.set_defaults(run=_export)

    generate = commands.add_parser(
        "generate", help="sample text from a retrained language model after a prompt"
    )
    generate.add_argument(
        "run_dir",
        metavar="RUN",
        help="a language-model run directory written by nasax train, or its export",
    )
    generate.add_argument("--prompt", required=True, help="the text to continue")
    generate.add_argument(
        "--length", type=int, default=200, help="tokens to generate (characters or words)"
    )
    generate.add_argument(
        "--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)"
    )
    generate.add_argument("--seed", type=int, default=0, help="the draws' seed")
    generate.add_argument(
        "--out",
        metavar="FILE",
        help="write the prompt and its continuation to this file (default: print)",
    )
    generate.set_defaults(run=_generate)

    show = commands.add_parser("show", help="print a genotype's cells and draw them")
    show.add_argument(
        "genotype", help="genotype.json, a search run directory, or a published name (DARTS_V2)"
    )
    show.add_argument(
        "--out",
        metavar="FILE",
        help="picture to write: .png or .svg (needs Graphviz's dot) or .dot (text)",
    )
    show.set_defaults(run=_show)

    profile = commands.add_parser(
        "profile", help="price a space's ops at the deployed size and time them on this machine"
    )
    profile.add_argument("config", help="a config file, or the name of a shipped config")
    _add_set_option(profile)
    profile.add_argument(
        "--batch", type=int, default=1, help="time at batch 1 and at this batch size"
    )
    profile.add_argument(
        "--out", metavar="FILE", required=True, help="the cost table to write (JSON)"
    )
    profile.add_argument(
        "--fresh", action="store_true", help="time again instead of reading the kept table"
    )
    profile.set_defaults(run=_profile)

    score = commands.add_parser(
        "score", help="score cells with zero-cost proxies at initialisation; resumable"
    )
    score.add_argument("config", nargs="?", help="a config file, or the name of a shipped config")
    _add_set_option(score)
    score.add_argument(
        "--list", action="store_true", help="list the proxies and their papers, and exit"
    )
    which = score.add_mutually_exclusive_group()
    which.add_argument(
        "--sample", type=int, help="this many distinct random cells (all, if N >= the space)"
    )
    which.add_argument(
        "--cells", help="a file of cells, one per line (NAS-Bench-201 string or JSON)"
    )
    score.add_argument(
        "--proxy", default="synflow,jacob_cov,snip", help="comma-separated proxies to compute"
    )
    score.add_argument("--batch", type=int, default=64, help="images in the scoring minibatch")
    score.add_argument(
        "--seed", type=int, default=0, help="the weights', batch's and sample's seed"
    )
    score.add_argument(
        "--out",
        metavar="FILE",
        help="the scores, one JSON line per cell (required; rerun to continue it)",
    )
    score.add_argument("--quiet", action="store_true", help="no progress lines")
    score.set_defaults(run=_score)

    report = commands.add_parser("report", help="write a run's static HTML report")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a search or retraining run directory")
    report.add_argument(
        "--out", metavar="FILE", help="the HTML file to write (default: RUN_DIR/report.html)"
    )
    report.set_defaults(run=_report)

    tune = commands.add_parser(
        "tune", help="tune a config's knobs (its `tune` section) with optuna; resumable"
    )
    tune.add_argument("config", help="a config file with a `tune` section, or a shipped name")
    _add_set_option(tune)
    tune.add_argument(
        "--out", help="study folder (default: <run.out_dir>/<name>-tune); rerun to continue"
    )
    tune.add_argument("--trials", type=int, help="trials in the study (overrides tune.trials)")
    tune.add_argument(
        "--storage",
        metavar="URL",
        help="the study's storage, shared by workers on many machines running this same "
        "command: postgresql://USER@HOST/DB, mysql://USER@HOST/DB, sqlite:///PATH or "
        "journal:PATH (a file on a shared filesystem); default: <out>/study.db",
    )
    tune.add_argument("--quiet", action="store_true", help="no progress bars")
    tune.set_defaults(run=_tune)
    return parser


def _names(word: str, option: str) -> bool:
    """Whether a command-line word is `option` (or `option=...`, or a prefix argparse takes)."""
    name = word.split("=", 1)[0]
    return len(name) > 2 and name.startswith("--") and option.startswith(name)


def continue_command(argv: Sequence[str], args: argparse.Namespace) -> str:
    """The command that carries on after a storage error: for search and train the same
    one with `--out` and `--resume` (or `--overwrite` before the first checkpoint), for
    tune the same one with `--out`, for the others the same one."""
    from nasax.core.checkpoint import complete_steps

    words = list(argv)
    if args.command == "export" and args.out_dir is not None:  # the deprecated form, mended
        words.remove(args.out_dir)
        words += ["--out", args.out_dir]
    if args.command in ("search", "train", "tune") and not any(_names(w, "--out") for w in words):
        words += ["--out", str(args.out)]
    if args.command in ("search", "train"):
        words = [w for w in words if not (_names(w, "--resume") or _names(w, "--overwrite"))]
        started = complete_steps(Path(args.out) / "checkpoints")
        words.append("--resume" if started else "--overwrite")
    return shlex.join(["nasax", *words])


def storage_line(e: StorageError, argv: Sequence[str], args: argparse.Namespace) -> str:
    """A storage error's line: what failed, what to do, and the command that carries on."""
    command = continue_command(argv, args)
    if command.endswith("--resume"):
        elsewhere, then = f"or move {args.out} to another disk and pass it as --out", "continue"
    else:
        elsewhere = "or pass --out elsewhere"
        then = "start again" if command.endswith("--overwrite") else "rerun"
    return f"nasax: {e}, {elsewhere}; then {then} with: {command}"


def _export_folder(args: argparse.Namespace) -> str | None:
    """`nasax export`'s folder: `--out DIR`, or the deprecated positional OUT_DIR (with a
    one-line note); None, after an error line, when neither or both are given."""
    if (args.out is None) != (args.out_dir is None):
        if args.out_dir is not None:
            print(
                "nasax: warning: nasax export RUN OUT_DIR is deprecated; "
                "use nasax export RUN --out OUT_DIR",
                file=sys.stderr,
            )
        return args.out or args.out_dir
    both = args.out is not None
    what = "give the folder once, as --out DIR" if both else "give --out DIR, the folder to write"
    print(f"nasax: error: nasax export: {what}", file=sys.stderr)
    return None


def _one_line_warnings() -> None:
    """nasax's own warnings (an untested JAX version) print as one `nasax: warning:`
    line; every other warning keeps Python's format."""
    previous = warnings.showwarning
    if getattr(previous, "nasax_one_line", False):
        return

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if getattr(category, "__module__", "").startswith("nasax"):
            print(f"nasax: warning: {message}", file=file or sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    show.nasax_one_line = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; nasax's own errors print as one line and exit with their status (2 for
    bad input, 69 for a tuning study's database out of reach, 74 for a storage error, 75 for a
    busy run directory, 128 + N for signal N)."""
    _one_line_warnings()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    enable_compilation_cache()
    if getattr(args, "resume", False) and not args.out:
        print("nasax: error: --resume needs --out RUN_DIR", file=sys.stderr)
        return 2
    if args.command == "export":
        args.out = _export_folder(args)
        if args.out is None:
            return 2
    try:
        return args.run(args)
    except StorageError as e:
        print(storage_line(e, argv, args), file=sys.stderr)
        return e.exit_code
    except NasaxError as e:
        print(f"nasax: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("nasax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
