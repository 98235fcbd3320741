"""Every shell command in the README and the bundle docs is checked, so a wrong program, subcommand, flag or config
override fails CI instead of a user:

* ``python -m monai.bundle run ...``: the config files exist, the run id is in them and every override names a key of
  the merged config (MONAI takes an unknown ``--key`` silently); other ``monai.bundle`` subcommands: each flag is a
  parameter of the function or a config key; ``verify_metadata`` is run for real.
* ``python -m <module> ...``, ``mlflow ...``, ``torchrun ...``: the subcommands exist and each flag is in the program's
  own ``--help`` (run in-process, as ``python -m`` runs it);
* ``bash scripts/*.sh``: the script exists and parses;
* ``.ci/run`` runs the README's set-up block verbatim.

Commands taken from fenced ``bash`` blocks and from inline code that starts with ``python -m``, ``mlflow`` or
``torchrun``. Commands that need a running server or the user's files (``curl``, ``cp``, ...) are listed in
``NOT_RUN`` with the test that covers them instead; any other program makes this test fail until a check is added.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import io
import os
import re
import runpy
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("README.md", os.path.join("bundles", "scrd", "docs", "README.md"))
NOT_RUN = {  # program -> why it is not run here
    "curl": "HTTP requests to a running server: tests/test_label.py and tests/test_registry.py send the same ones",
    "mkdir": "creates the user's studies folder",
    "cp": "copies the user's images",
    "find": "finds and copies the user's images (one command whatever extensions are missing, unlike cp with globs)",
    "export": "sets an environment variable",
    ".": "activates the venv (.ci/run does, see test_ci_runs_the_readme_setup)",
}
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"(?<!`)`((?:python3? -m|mlflow|torchrun) [^`]+)`(?!`)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _commands(text: str) -> list[list[str]]:
    """Shell commands (as argument lists) of the fenced shell blocks and the inline commands of a Markdown text."""
    lines = []
    for lang, body in FENCE.findall(text):
        if lang in ("bash", "sh", "shell"):
            lines += body.replace("\\\n", " ").splitlines()
    lines += INLINE.findall(FENCE.sub("", text))
    commands = []
    for line in lines:
        words: list[str] = []
        for word in shlex.split(line, comments=True) + ["&&"]:
            if word in ("&&", "||", ";", "|"):
                while words and ENV_ASSIGNMENT.match(words[0]):  # VAR=value command ...
                    words.pop(0)
                if words:
                    commands.append(words)
                words = []
            else:
                words.append(word)
    return commands


def _documented() -> list[tuple[str, list[str]]]:
    out = []
    for doc in DOCS:
        with open(os.path.join(REPO, doc)) as f:
            out += [(doc, cmd) for cmd in _commands(f.read())]
    return out


@functools.lru_cache(maxsize=None)
def _run_help(module: str, *subcommands: str) -> tuple[bool, str]:
    """``python -m module sub ... --help``, run in this process as ``python -m`` runs it: (exited cleanly, output)."""
    out = io.StringIO()
    argv, code = sys.argv, 0  # a program may also just return after printing its help (torchrun does)
    sys.argv = [module, *subcommands, "--help"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    except ImportError as e:
        code = f"{type(e).__name__}: {e}"
    finally:
        sys.argv = argv
    return code in (0, None), out.getvalue()


def _help(module: str, *subcommands: str) -> str:
    ok, text = _run_help(module, *subcommands)
    assert ok, f"python -m {module} {' '.join(subcommands)} --help failed:\n{text[-2000:]}"
    return text


def _has_subcommands(help_text: str) -> bool:
    return "Commands:" in help_text or re.search(r"\{[\w-]+(,[\w-]+)+\}", help_text) is not None


def _flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", a)]


def _check_with_help(module: str, args: list[str]) -> None:
    """Leading words of ``args`` are subcommands while ``... word --help`` answers with a help of its own (hidden
    commands such as ``mlflow ui`` included); every flag must be in the help of the (sub)command."""
    path: list[str] = []
    text = _help(module)
    for word in args:
        if word.startswith("-"):
            break
        ok, sub_text = _run_help(module, *path, word)
        if not ok:
            assert not _has_subcommands(text), f"`python -m {module} {' '.join(path)}` has no subcommand {word!r}"
            break
        if sub_text == text:  # a positional argument, not a subcommand
            break
        path.append(word)
        text = sub_text
    for flag in _flags(args):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), \
            f"`python -m {module} {' '.join(path)}` has no option {flag} (see its --help)"


def _bundle_kwargs(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Positional words and ``--key value`` pairs of a ``python -m monai.bundle <cmd>`` (fire) command line."""
    positional, kwargs, i = [], {}, 0
    while i < len(args):
        if args[i].startswith("--"):
            key, _, value = args[i][2:].partition("=")
            if not value and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            kwargs[key] = value
        else:
            positional.append(args[i])
        i += 1
    return positional, kwargs


def _check_monai_bundle(args: list[str]) -> None:
    import monai.bundle.__main__ as bundle_cli
    from monai.bundle import ConfigParser

    command, rest = args[0], args[1:]
    func = getattr(bundle_cli, command, None)
    assert callable(func), f"python -m monai.bundle has no command {command!r}"
    positional, kwargs = _bundle_kwargs(rest)
    params = set(inspect.signature(func).parameters)
    parser = None
    if "config_file" in kwargs:
        value = kwargs["config_file"]
        files = ast.literal_eval(value) if value.startswith("[") else [value]
        for f in files:
            assert os.path.isfile(os.path.join(REPO, f)), f"{f}: no such config file"
        parser = ConfigParser()
        parser.read_config([os.path.join(REPO, f) for f in files])
    for key in ("meta_file",) + (("filepath",) if command == "verify_metadata" else ()):
        if key in kwargs:
            assert os.path.isfile(os.path.join(REPO, kwargs[key])), f"--{key} {kwargs[key]}: no such file"
    if command == "run":
        run_id = positional[0] if positional else "run"
        assert parser is not None and run_id in parser, f"run id {run_id!r} is not in {kwargs.get('config_file')}"
    for key in kwargs:
        if key not in params:
            assert parser is not None and key in parser, (
                f"python -m monai.bundle {command}: --{key} is neither an option nor a key of the config "
                f"{kwargs.get('config_file')} (MONAI would take it silently and change nothing)")


def _check(cmd: list[str]) -> None:
    program, args = cmd[0], cmd[1:]
    if program in NOT_RUN:
        return
    if program in ("python", "python3"):
        assert args[:1] == ["-m"] and len(args) > 1, f"{shlex.join(cmd)}: use `python -m <module>`"
        module, args = args[1], args[2:]
        if module == "pytest":  # the test runner itself: .ci/run runs it
            return
        if module == "monai.bundle":
            _check_monai_bundle(args)
        else:
            _check_with_help(module, args)
    elif program == "mlflow":
        _check_with_help("mlflow", args)
    elif program == "torchrun":
        split = args.index("-m")
        _check_with_help("torch.distributed.run", args[:split])
        _check(["python", *args[split:]])
    elif program == "bash":
        script = os.path.join(REPO, args[0])
        assert os.path.isfile(script), f"{args[0]}: no such script"
        res = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
        assert res.returncode == 0, f"{args[0]} does not parse: {res.stderr}"
    else:
        raise AssertionError(f"no check for `{program}`: add one to tests/test_docs.py (or to NOT_RUN, saying why)")


def test_docs_have_commands():
    programs = {cmd[0] for _, cmd in _documented()}
    assert {"python", "bash", "mlflow", "torchrun"} <= programs  # the extraction works


@pytest.mark.slow  # imports MLflow, MONAI, torch's launcher for their --help
@pytest.mark.parametrize("doc", DOCS)
def test_documented_commands(doc):
    failures = []
    for where, cmd in _documented():
        if where == doc:
            try:
                _check(cmd)
            except AssertionError as e:
                failures.append(f"{shlex.join(cmd)}\n    -> {e}")
    assert not failures, f"{doc}: {len(failures)} documented command(s) fail:\n" + "\n".join(failures)


@pytest.mark.slow
def test_wrong_flags_are_caught():
    """The checks fail on the kinds of mistakes they exist for."""
    for bad in (
        ["mlflow", "runs", "list", "--experiment-name", "scrd"],  # no such option in MLflow 3
        ["python", "-m", "monai.bundle", "run", "training", "--config_file", "bundles/scrd/configs/train.json",
         "--max_iteration", "5"],  # misspelt override: MONAI would ignore it
        ["python", "-m", "monai_scrd.prepare", "--train-normals", "x"],
        ["mlflow", "runs", "lists"],  # no such subcommand
        ["python", "-m", "monai.bundle", "run", "trainin", "--config_file", "bundles/scrd/configs/train.json"],
        ["wget", "https://example.org"],
    ):
        try:
            _check(bad)
        except AssertionError:
            continue
        raise AssertionError(f"the doc check let {shlex.join(bad)} pass")


@pytest.mark.slow
def test_verify_metadata_runs():
    """The cheap bundle check of the docs, run for real (offline schema copy)."""
    cmd = [cmd for _, cmd in _documented() if cmd[:4] == ["python", "-m", "monai.bundle", "verify_metadata"]]
    assert cmd, "bundle docs lost the verify_metadata command"
    res = subprocess.run([sys.executable, *cmd[0][1:]], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "metadata is verified with no error" in (res.stdout + res.stderr)


def test_ci_runs_the_readme_setup():
    """.ci/run does what the README tells a new user: the set-up block's lines, verbatim and in order."""
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("## Set-up"):]
    lang, block = FENCE.findall(section)[0]
    setup = [line.strip() for line in block.splitlines() if line.strip()]
    assert setup[0].startswith("python3 -m venv .venv") and any("scripts/install.sh" in s for s in setup)
    with open(os.path.join(REPO, ".ci", "run")) as f:
        ci = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    positions = [ci.index(line) if line in ci else -1 for line in setup]
    assert -1 not in positions and positions == sorted(positions), (setup, ci)
    assert any(line.startswith("export SCRD_REQUIRE_LABEL=1") for line in ci[: positions[-1]])
