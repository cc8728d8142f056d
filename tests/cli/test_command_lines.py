"""Every `dema-lab ...` command line the project shows a person (README.md, the Makefile, scripts/*.sh
and the notebooks) parses with today's parser, so that a renamed or removed flag fails here and not
in a reader's terminal. Parse only: nothing is trained, served or written.

scripts/*.sh build their command lines from shell variables, so each script runs once with a fake
dema-lab ($DEMA_LAB) that records its arguments; the Markdown's placeholders (RUN_ID, NAME, FILE,
...) stand for values of the right type."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dema_lab.cli.main import build_parser
from dema_lab.cli.study import parse_set

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = re.compile(r"^(?:\$\(VENV\)/bin/|\.venv/bin/|!)?dema-lab(?=\s|$)")
# the placeholders the documents write, and a value of the right kind for each
PLACEHOLDERS = {
    "RUN_ID": "run",
    "NAME": "name",
    "FILE": "file.toml",
    "DIR": "dir",
    "PATH": "path",
    "S": "100",
    "N": "1",
    "[EPISODE]": "episode",
    "all|N": "all",
}


def _argv(text: str) -> list[str]:
    """The arguments after `dema-lab`, comments dropped, placeholders given values; an elided value
    (`--datasets ...`) becomes one value and any other `...` is dropped."""
    words = shlex.split(PROGRAM.sub("", text.strip(), count=1), comments=True)
    out = []
    for word in words:
        if word in ("...", "…"):
            if out and out[-1].startswith("--"):
                out.append("x")
            continue
        out.append(PLACEHOLDERS.get(word, word))
    return out


def _spans(text: str) -> list[str]:
    """Inline code spans that are a dema-lab command: `dema-lab train --K 20`."""
    return [m.group(1) for m in re.finditer(r"`(dema-lab(?: [^`]*)?)`", text)]


def _markdown(text: str) -> list[str]:
    """Command lines in a Markdown text: the lines of its fenced blocks that call dema-lab
    (backslash continuations joined) and its inline spans."""
    found, prose, block = [], [], None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            block = [] if block is None else found.extend(_block(block)) or None
            continue
        (prose if block is None else block).append(line)
    return found + _spans("\n".join(prose))


def _block(lines: list[str]) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [ln.strip() for ln in joined.splitlines() if PROGRAM.match(ln.strip())]


def _script_commands(script: Path, tmp: Path) -> list[str]:
    """The dema-lab command lines a shell script runs, recorded by a fake dema-lab."""
    text = script.read_text()
    assert "${DEMA_LAB:-" in text, (
        f"{script.name}: call dema-lab as ${{DEMA_LAB:-.venv/bin/dema-lab}} so that its command lines can be checked"
    )
    log = tmp / f"{script.stem}.jsonl"
    fake = tmp / "dema-lab"
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\nopen({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items() if k not in ("TRAIN_ONLY", "STORE", "WORKERS")}
    done = subprocess.run(
        ["bash", str(script)], env={**env, "DEMA_LAB": str(fake)}, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [shlex.join(json.loads(line)) for line in log.read_text().splitlines()] if log.exists() else []


def command_lines(tmp: Path) -> list[tuple[str, str]]:
    """(where, command line) for every dema-lab command the project shows."""
    out = [("README.md", c) for c in _markdown((ROOT / "README.md").read_text())]
    for line in (ROOT / "Makefile").read_text().splitlines():
        if PROGRAM.match(line.strip()):
            out.append(("Makefile", line.strip()))
    for script in sorted((ROOT / "scripts").glob("*.sh")):
        if "dema-lab" in script.read_text():
            out += [(f"scripts/{script.name}", c) for c in _script_commands(script, tmp)]
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            source = "".join(cell["source"])
            lines = _markdown(source) if cell["cell_type"] == "markdown" else _block(source.splitlines())
            out += [(f"notebooks/{nb.name}", c) for c in lines]
    return out


def parse(argv: list[str]):
    """dema-lab's parser on argv (and sweep's --set KEY=VALUE, which name TrainConfig fields);
    None for --help and --version. A command named alone (`dema-lab video`, in prose) must exist:
    it is asked for its --help."""
    if len(argv) == 1 and not argv[0].startswith("-"):
        argv = [*argv, "--help"]
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as e:  # --help / --version print and exit 0
        assert e.code == 0, argv
        return None
    if getattr(ns, "set", None):
        parse_set(ns.set)
    return ns


def test_every_command_line_shown_parses(tmp_path, capsys):
    lines = command_lines(tmp_path)
    where = {w for w, _ in lines}
    # each source is read (an extraction that finds nothing would make this test pass vacuously)
    assert {"README.md", "Makefile", "scripts/study.sh"} <= where, where
    assert any(w.startswith("notebooks/") for w in where), where
    assert len([1 for w, _ in lines if w == "README.md"]) >= 30
    failed = []
    for source, line in lines:
        try:
            parse(_argv(line))
        except Exception as e:  # noqa: BLE001 - collected: every broken line is listed at once
            failed.append(f"{source}: {line}\n    {type(e).__name__}: {e}")
    capsys.readouterr()
    assert not failed, f"{len(failed)} of {len(lines)} command lines do not parse:\n" + "\n".join(failed)


def test_the_study_script_is_read_as_it_runs(tmp_path):
    lines = [c for w, c in command_lines(tmp_path) if w == "scripts/study.sh"]
    assert len(lines) == 5 and lines[-1].startswith("report --store store --sweep study")
    sweeps = [parse(_argv(c)) for c in lines[:-1]]
    assert [ns.sweep_fields["K"] for ns in sweeps] == [[5, 20, 40], [20], [20], [20]]
    assert parse_set(sweeps[0].set)["steps"] == 1000


@pytest.mark.parametrize(
    "line, error",
    [
        ("dema-lab train --dataset hopper-medium --no-such-flag 3", "no-such-flag"),
        ("dema-lab sweep --K 5 --set no_such_field=1", "no_such_field"),
        ("dema-lab runs --no-such-flag", "unrecognized arguments"),
        ("dema-lab no-such-command", "invalid choice"),
    ],
)
def test_a_renamed_flag_fails(line, error, capsys):
    with pytest.raises((ValueError, SystemExit), match=error):
        parse(_argv(line))
