"""Runs the execution-engine tests against the newest JAX, Flax and Optax; one JSON line.

Block execution reads JAX's jaxpr internals, which change in patch releases, so the
project caps JAX at the versions it was tested on. This check installs nasax into a fresh
venv with the newest release of every dependency, then lifts any caps on the JAX stack
(`pip install --upgrade jax jaxlib flax optax orbax-checkpoint`; pip warns about the
bounds, as intended) and runs the engine's tests, so a breaking release is known here
before a user meets it:

    python benchmarks/newest_deps.py [--python PATH] [--venv DIR] [--respect-bounds]
        [--tests tests/test_blocks.py ...] [--keep]

pip's and pytest's output goes to stderr and to `log.txt` in a temporary folder, which
also holds the venv (unless `--venv`), the JUnit results and the tests' own compilation
cache; `--keep` keeps it and puts the log's path in the line. `seconds` is the whole
check's wall time. Exit status 0 when the tests pass, else 1 (also when the venv or an
install fails: then the line has an `error`).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
LIBRARIES = ["jax", "jaxlib", "flax", "optax", "orbax-checkpoint"]
"""The JAX stack: what this check upgrades past the project's upper bounds."""
REPORTED = [*LIBRARIES, "numpy"]
TESTS = [
    "tests/test_blocks.py",
    "tests/test_plan_cache.py",
    "tests/test_parallel.py",
    "tests/test_darts_second_order.py",
]
"""The execution engine's tests: block execution, its plan cache, sharding, second order."""
VERSIONS_SCRIPT = f"""
import importlib.metadata as m, json, platform
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
print(json.dumps({{"python": platform.python_version(),
                  "versions": {{n: version(n) for n in {REPORTED!r}}}}}))
"""


class SetupError(Exception):
    """Creating the venv or installing into it failed; the message is one line."""


def run_logged(cmd: list[str], log: IO[str], **kwargs) -> tuple[int, list[str]]:
    """Runs `cmd` with its output copied to stderr and `log`; returns its exit status and
    its last lines."""
    print(f"$ {' '.join(cmd)}", file=log, flush=True)
    print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=200)
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        **kwargs,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            log.write(line)
            tail.append(line.rstrip())
    log.flush()
    return proc.returncode, list(tail)


def last_error(lines: list[str]) -> str:
    """The last line pip marked `ERROR:`, else the last line that says anything."""
    said = [line.strip() for line in lines if line.strip()]
    errors = [line for line in said if line.startswith("ERROR:")]
    return (errors or said or ["(no output)"])[-1]


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / "python"


def make_venv(venv: Path, python: str, log: IO[str]) -> Path:
    """The venv's interpreter, creating the venv with `python` unless it exists."""
    if not venv_python(venv).exists():
        try:
            status, tail = run_logged([python, "-m", "venv", str(venv)], log)
        except OSError as e:
            raise SetupError(f"creating the venv {venv} failed: {e}") from e
        if status:
            raise SetupError(f"creating the venv {venv} failed: {last_error(tail)}")
    return venv_python(venv)


def pip_install(python: Path, args: list[str], log: IO[str]) -> None:
    """`pip install --upgrade --upgrade-strategy eager ARGS`: the newest the index offers."""
    cmd = [str(python), "-m", "pip", "install", "--upgrade", "--upgrade-strategy", "eager"]
    status, tail = run_logged([*cmd, *args], log)
    if status:
        raise SetupError(f"pip install {' '.join(args)} failed: {last_error(tail)}")


def venv_env(venv: Path, cache: Path) -> dict[str, str]:
    """The caller's environment as if `venv` were activated (so subprocesses the tests
    start find its packages, not the caller's), with a compilation cache of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv_python(venv).parent), env.get("PATH", "")])
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    return env


def node_id(classname: str, name: str) -> str:
    """pytest's node id back from a JUnit test case (`tests.test_x.TestY`, `test_z`); a
    collection error has no class name and the module's dotted path as its name."""
    parts, rest = (classname.split("."), [name]) if classname else (name.split("."), [])
    for i in range(len(parts), 0, -1):
        module = Path(*parts[:i]).with_suffix(".py")
        if (REPO / module).is_file():
            return "::".join([module.as_posix(), *parts[i:], *rest])
    return "::".join([classname, name]) if classname else name


def read_junit(path: Path) -> dict:
    """Counts of passed, failed, errors and skipped tests, and the failed ones' ids."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures = []
    for case in ET.parse(path).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        # A test that fails and then errors in teardown counts in both, as pytest counts.
        if "failure" in tags:
            counts["failed"] += 1
        if "error" in tags:
            counts["errors"] += 1
        if "skipped" in tags:
            counts["skipped"] += 1
        if tags & {"failure", "error"}:
            failures.append(node_id(case.get("classname", ""), case.get("name", "")))
        elif "skipped" not in tags:
            counts["passed"] += 1
    return {**counts, "failures": list(dict.fromkeys(failures))}  # one id per test


def check(args: argparse.Namespace, work: Path, log: IO[str], venv: Path) -> dict:
    """Installs into `venv`, runs the tests, and returns the JSON line's fields."""
    python = make_venv(venv, args.python, log)
    pip_install(python, ["pip"], log)
    pip_install(python, ["-e", f"{REPO}[dev]"], log)
    if not args.respect_bounds:
        pip_install(python, LIBRARIES, log)
    env = venv_env(venv, work / "jax-cache")
    found = subprocess.run(
        [str(python), "-c", VERSIONS_SCRIPT], env=env, capture_output=True, text=True, check=False
    )
    if found.returncode:
        raise SetupError(
            f"reading the venv's versions failed: {last_error(found.stderr.splitlines())}"
        )
    junit = work / "junit.xml"
    pytest = ["-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    status, tail = run_logged([str(python), *pytest, *args.tests], log, cwd=REPO, env=env)
    fields = json.loads(found.stdout)
    if not junit.is_file():
        return {**fields, "error": f"pytest exited with {status}: {last_error(tail)}"}
    result = {**fields, **read_junit(junit)}
    if status not in (0, 1):  # interrupted, internal or usage error, no tests collected
        result["error"] = f"pytest exited with {status}: {last_error(tail)}"
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--python",
        default=sys.executable,
        metavar="PATH",
        help="interpreter to build the venv with",
    )
    ap.add_argument(
        "--venv",
        type=Path,
        metavar="DIR",
        help="venv to create, or reuse if it exists (default: a new one in a temporary folder)",
    )
    ap.add_argument(
        "--respect-bounds",
        action="store_true",
        help="keep the project's upper bounds on " + ", ".join(LIBRARIES),
    )
    ap.add_argument(
        "--tests", nargs="+", default=TESTS, metavar="PATH", help="test files or node ids"
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (log, venv, results)"
    )
    args = ap.parse_args(argv)

    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="nasax-newest-deps-"))
    venv = args.venv.resolve() if args.venv else work / "venv"
    try:
        with open(work / "log.txt", "w") as log:
            try:
                result = check(args, work, log, venv)
            except SetupError as e:
                print(f"newest_deps: {e}", file=sys.stderr, flush=True)
                result = {"error": str(e)}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    counts = {key: result.get(key, 0) for key in ("passed", "failed", "errors", "skipped")}
    out = {
        "bench": "newest_deps",
        "python": result.get("python"),
        "versions": result.get("versions", {}),
        "respect_bounds": args.respect_bounds,
        "tests": args.tests,
        **counts,
        "ok": "error" not in result and counts["failed"] == counts["errors"] == 0,
        "seconds": round(time.monotonic() - start, 1),
        "failures": result.get("failures", []),
    }
    if "error" in result:
        out["error"] = result["error"]
    if args.keep:
        out["log"] = str(work / "log.txt")
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
