"""The documentation cannot drift from the code: the site builds with warnings as errors,
every `python` and shell snippet of README.md and docs/ runs, and every `yaml` snippet is
a valid config.

How a page's snippets run (docs/development.md, "The documentation site"):

- The page's `python`, `bash`, `shell`, `sh` and `console` blocks run in order, in one
  temporary directory, so a `nasax train` reads the run a `nasax search` above it wrote.
  A shell block runs through `bash -euo pipefail`; a Python block runs as a file through
  the venv's Python. A `console` block runs its `$ ` lines.
- WARM: each `nasax` command and each Python block runs in a process of its own, forked
  from a warm interpreter that has imported JAX, Flax, Optax and nasax (and nothing
  else: no backend, no compiled program), so a command pays for its own work and not for
  ~2-3 s of imports. The `nasax` that bash finds first on PATH is a small client of that
  interpreter; a command that sets `JAX_*` or `XLA_*` variables, which JAX reads at
  import, runs the installed `nasax` instead. `NASAX_DOCS_COLD=1` runs every snippet in
  a fresh process (the venv's `nasax` and Python), as a reader would.
- The directory starts with `FIXTURES`: `tiny_digits.npz` (the suite's tiny digits) and
  `input.txt` (some English text), which the snippets' directives point runs at.
- Tiny sizes are declared in the page, on the comment lines just above a block (MyST's
  `% test: ...`, or `<!-- test: ... -->` in README.md, which GitHub renders):
  `% test: --set k=v ... --quiet` appends those arguments to every `nasax
  search|train|tune|score` line of the block; `% test: replace "old" "new"` substitutes
  text in the block (which must hold it); `% test: skip REASON` does not run it.
- `text` blocks (synopses, file trees) do not run. docs/benchmarks.md includes
  benchmarks/README.md, whose scripts measure for minutes; its blocks are not run.
"""

from __future__ import annotations

import array
import importlib
import json
import os
import re
import runpy
import shlex
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)]
SHELLS = {"bash", "shell", "sh", "console"}
RUNNABLE = SHELLS | {"python"}
NASAX_RUN = re.compile(r"(^|[\s;&|(])nasax\s+(search|train|tune|score)\b")
"""A command line that takes a directive's arguments."""
DIRECTIVE = re.compile(r"^(?:%\s*test:(.*)|<!--\s*test:(.*?)-->)\s*$")
FENCE = re.compile(r"^(`{3,})\s*([^`\s]*)")
SNIPPET_SECONDS = 600


@dataclass
class Snippet:
    """One fenced block of a page and what its directives say."""

    page: Path
    line: int
    lang: str
    code: str
    args: list[str] = field(default_factory=list)
    replacements: list[tuple[str, str]] = field(default_factory=list)
    skip: str | None = None
    directives: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def runnable(self) -> str:
        """The code as the test runs it: replacements made, arguments appended."""
        code = self.code
        for old, new in self.replacements:
            assert old in code, f"{self.where}: `replace` finds no {old!r} in its block"
            code = code.replace(old, new)
        if self.lang == "console":
            code = "\n".join(ln[2:] for ln in code.splitlines() if ln.startswith("$ "))
        if self.lang in SHELLS and self.args:
            code = append_args(code, self.args)
        return code


def append_args(code: str, args: list[str]) -> str:
    """`args` appended to every `nasax search|train|tune|score` command of shell `code`,
    at the end of its last continuation line and before a trailing comment."""
    lines = code.splitlines()
    out: list[str] = []
    group: list[str] = []
    for line in lines:
        group.append(line)
        if line.rstrip().endswith("\\"):
            continue
        if NASAX_RUN.search(" ".join(group)):
            command, comment = split_comment(group[-1])
            group[-1] = f"{command.rstrip()} {shlex.join(args)}{comment}"
        out += group
        group = []
    return "\n".join(out + group) + "\n"


def split_comment(line: str) -> tuple[str, str]:
    """(command, `  # comment`) of a shell line: the first `#` outside quotes that starts
    a word."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], "  " + line[i:]
    return line, ""


def parse_directive(snippet: Snippet, text: str) -> None:
    words = shlex.split(text)
    assert words, f"{snippet.where}: an empty test directive"
    if words[0] == "skip":
        assert len(words) > 1, f"{snippet.where}: `skip` needs a reason"
        snippet.skip = " ".join(words[1:])
    elif words[0] == "replace":
        assert len(words) == 3, f'{snippet.where}: write replace "old" "new"'
        snippet.replacements.append((words[1], words[2]))
    else:
        assert words[0].startswith("-"), f"{snippet.where}: not a directive: {text!r}"
        snippet.args += words


def snippets(page: Path) -> list[Snippet]:
    """The fenced blocks of `page`, each with the test directives on the lines above it."""
    lines = page.read_text().splitlines()
    found: list[Snippet] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        ticks, lang = fence.groups()
        end = i + 1
        while end < len(lines) and not lines[end].startswith(ticks):
            end += 1
        snippet = Snippet(page, i + 1, lang, "\n".join(lines[i + 1 : end]) + "\n")
        above = i - 1
        while above >= 0 and (match := DIRECTIVE.match(lines[above].strip())):
            snippet.directives.insert(0, (match.group(1) or match.group(2)).strip())
            above -= 1
        for text in snippet.directives:
            parse_directive(snippet, text)
        found.append(snippet)
        i = end + 1
    return found


def stray_directives(page: Path) -> list[int]:
    """Lines of `page`, outside blocks, with a directive that no block follows."""
    lines = page.read_text().splitlines()
    stray, ticks = [], None
    for i, line in enumerate(lines):
        fence = FENCE.match(line)
        if ticks is not None:
            ticks = None if line.startswith(ticks) else ticks
        elif fence:
            ticks = fence.group(1)
        elif DIRECTIVE.match(line.strip()):
            following = i + 1
            while following < len(lines) and DIRECTIVE.match(lines[following].strip()):
                following += 1
            if following == len(lines) or not FENCE.match(lines[following]):
                stray.append(i + 1)
    return stray


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


RUN_PAGES = [p for p in PAGES if any(s.lang in RUNNABLE and not s.skip for s in snippets(p))]

INPUT_TEXT = """\
ROMEO: But, soft! what light through yonder window breaks?
It is the east, and Juliet is the sun.
Arise, fair sun, and kill the envious moon,
Who is already sick and pale with grief,
That thou her maid art far more fair than she.
JULIET: O Romeo, Romeo! wherefore art thou Romeo?
Deny thy father and refuse thy name;
Or, if thou wilt not, be but sworn my love,
And I'll no longer be a Capulet.
"""


def write_fixtures(workdir: Path) -> None:
    """What every page's directory starts with (`FIXTURES` in the module docstring)."""
    from sklearn.datasets import load_digits

    digits = load_digits()  # as conftest's tiny_npz
    images = np.round(digits.images * 16).clip(0, 255).astype(np.uint8)
    np.savez(
        workdir / "tiny_digits.npz",
        x_train=images[:128],
        y_train=digits.target[:128],
        x_test=images[128:192],
        y_test=digits.target[128:192],
    )
    (workdir / "input.txt").write_text(INPUT_TEXT * 12)


WARM_IMPORTS = ("jax", "flax.nnx", "optax", "nasax.app.cli", "nasax.search.task", "nasax.train")
"""What the warm interpreter imports before it forks (WARM in the module docstring)."""

READS_AT_IMPORT = ("JAX_", "XLA_")
"""Variables JAX reads when it is imported: a command that changes them runs cold."""

CLIENT = """\
#!{python} -S
# `nasax` for the docs' snippets (tests/test_docs.py, WARM): the command runs in a child
# forked from a warm interpreter, or in the installed command when it sets JAX_/XLA_
# variables the warm interpreter has already read.
import array, json, os, socket, sys

SOCKET, NASAX, BASE = {socket!r}, {nasax!r}, {base!r}
args = sys.argv[1:]
kind = "python" if args[:1] == ["--python-snippet"] else "nasax"
if kind == "python":
    args = args[1:]
read = {{k: v for k, v in os.environ.items() if k.startswith({prefixes!r})}}
if read != BASE:
    command = [sys.executable, *args] if kind == "python" else [NASAX, *args]
    os.execv(command[0], command)
request = json.dumps({{"kind": kind, "argv": args, "cwd": os.getcwd(), "env": dict(os.environ)}})
with socket.socket(socket.AF_UNIX) as conn:
    conn.connect(SOCKET)
    data = request.encode()
    fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]).tobytes())]
    conn.sendmsg([len(data).to_bytes(8, "big")], fds)
    conn.sendall(data)
    status = conn.recv(8)
sys.exit(int.from_bytes(status, "big", signed=True) if len(status) == 8 else 1)
"""


class Warm(NamedTuple):
    """The warm interpreter's client: `bin` holds it as `nasax`."""

    bin: Path
    client: Path


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """A client's request and its stdin, stdout and stderr."""
    head, ancillary, _flags, _addr = conn.recvmsg(8, socket.CMSG_LEN(3 * 4))
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    size, body = int.from_bytes(head, "big"), b""
    while len(body) < size:
        body += conn.recv(size - len(body))
    return json.loads(body), list(fds)


def _run_request(request: dict, fds: list[int]) -> int:
    """Runs a client's command in this (forked) process; returns its exit status."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    try:
        if request["kind"] == "python":
            script = request["argv"][0]
            sys.argv, sys.path[0] = list(request["argv"]), str(Path(script).parent.absolute())
            runpy.run_path(script, run_name="__main__")
            return 0
        from nasax.app.cli import main

        sys.argv = ["nasax", *request["argv"]]
        return main(request["argv"])
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def serve(path: str) -> None:
    """The warm interpreter: imports WARM_IMPORTS, then forks a child per request, one at
    a time, and answers each with the child's exit status. A child leaves through
    `sys.exit`, so it ends as a process of its own would (threads joined, atexit run)."""
    for name in WARM_IMPORTS:
        importlib.import_module(name)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        while True:
            conn, _ = listener.accept()
            with conn:
                request, fds = _receive(conn)
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    sys.exit(_run_request(request, fds))
                for fd in fds:
                    os.close(fd)
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
                conn.sendall(code.to_bytes(8, "big", signed=True))


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warm | None]:
    """The warm interpreter and its client, or None under NASAX_DOCS_COLD=1."""
    if os.environ.get("NASAX_DOCS_COLD") == "1":
        yield None
        return
    folder = tmp_path_factory.mktemp("warm")
    path = folder / "socket"
    log = open(folder / "server.log", "w")  # noqa: SIM115 (open while the server runs)
    server = subprocess.Popen(
        [sys.executable, __file__, "serve", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while not path.exists():
        assert server.poll() is None, (folder / "server.log").read_text()
        assert time.monotonic() < deadline, "the warm interpreter did not start"
        time.sleep(0.05)
    base = {k: v for k, v in os.environ.items() if k.startswith(READS_AT_IMPORT)}
    client = folder / "bin" / "nasax"
    client.parent.mkdir()
    client.write_text(
        CLIENT.format(
            python=sys.executable,
            socket=str(path),
            nasax=str(Path(sys.executable).parent / "nasax"),
            base=base,
            prefixes=READS_AT_IMPORT,
        )
    )
    client.chmod(0o755)
    try:
        yield Warm(client.parent, client)
    finally:
        server.terminate()
        server.wait()
        log.close()


def run_snippet(snippet: Snippet, workdir: Path, warm: Warm | None = None) -> None:
    env = dict(os.environ)
    path = [str(Path(sys.executable).parent), env.get("PATH", "")]
    env["PATH"] = os.pathsep.join([str(warm.bin), *path] if warm else path)
    env["MPLBACKEND"] = "Agg"
    code = snippet.runnable()
    if snippet.lang == "python":
        script = workdir / f"_snippet_{snippet.line}.py"
        script.write_text(code)
        command = [sys.executable, str(script)]
        if warm:
            command = [sys.executable, "-S", str(warm.client), "--python-snippet", str(script)]
    else:
        command = ["bash", "-euo", "pipefail", "-c", code]
    done = subprocess.run(
        command,
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=SNIPPET_SECONDS,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        pytest.fail(
            f"{snippet.where}: the {snippet.lang} block exited {done.returncode}\n"
            f"--- as run:\n{code}--- output (last lines):\n{tail}",
            pytrace=False,
        )


def test_site_builds_without_warnings(tmp_path):
    """How CI builds the site: Sphinx with every warning an error (a broken link, a
    docstring Sphinx cannot read, a config key without a description)."""
    sphinx = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
    built = subprocess.run(
        [*sphinx, "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-5000:]
    assert (tmp_path / "html" / "config.html").is_file()


class PageSnippets:
    """A page's snippets, run in order as the module docstring says."""

    page: Path

    def test_snippets_run(self, tmp_path, warm):
        write_fixtures(tmp_path)
        for snippet in snippets(self.page):
            if snippet.lang in RUNNABLE and not snippet.skip:
                run_snippet(snippet, tmp_path, warm)


# One test class per page (TestPage_docs_getting_started, ...): pytest-xdist's `--dist
# loadscope` keeps a class on one worker, so the pages spread over both workers.
for _page in RUN_PAGES:
    _name = "TestPage_" + re.sub(r"\W+", "_", _page_id(_page).removesuffix(".md"))
    globals()[_name] = type(_name, (PageSnippets,), {"page": _page})


def test_directives_are_well_formed():
    """Every directive sits above a block it can apply to, and says something it can do:
    a skip with a reason, a replacement its block holds, arguments for a nasax command."""
    for page in PAGES:
        assert stray_directives(page) == [], f"{page}: directives above no block"
        for snippet in snippets(page):
            if snippet.directives:
                assert snippet.lang in RUNNABLE, f"{snippet.where}: a directive on {snippet.lang}"
            snippet.runnable()
            if snippet.args:
                assert NASAX_RUN.search(snippet.code), f"{snippet.where}: no command to append to"


def test_skips_are_rare():
    """A skipped block is one that cannot run here (a GPU, a database, data that is not
    bundled); most blocks run."""
    blocks = [s for p in PAGES for s in snippets(p) if s.lang in RUNNABLE]
    skipped = [s for s in blocks if s.skip]
    assert len(skipped) <= len(blocks) // 3, [s.where for s in skipped]


def test_the_api_reference_names_every_export():
    """docs/api.md names each public name of `nasax`, so a new export gets documented."""
    import nasax

    text = (DOCS / "api.md").read_text()
    assert [name for name in nasax.__all__ if f"nasax.{name}" not in text] == []


def test_yaml_snippets_are_valid_configs():
    """Each `yaml` block is (part of) a config the schema accepts as written."""
    from nasax.search.options import validate_config

    for page in PAGES:
        for snippet in snippets(page):
            if snippet.lang == "yaml":
                validate_config(yaml.safe_load(snippet.code), snippet.where)


def test_ci_runs_the_readme_install_and_test_commands():
    """.ci/run installs and tests with exactly the README's commands."""
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    readme = [s.code.strip() for s in snippets(ROOT / "README.md") if s.lang in SHELLS]
    install = next(c for c in readme if c.startswith("pip install"))
    test = next(c for c in readme if c.startswith("pytest"))
    assert install == 'pip install -e ".[dev]" -c .ci/constraints.txt' and install in ci
    assert test == "pytest -q" and ci[-1] == test


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(sys.argv[2])
