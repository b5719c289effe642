"""The documentation runs: every ```python block of README.md and docs/*.md executes, each in a
fresh namespace and its own temporary working folder; the commands README.md gives are the ones
.ci/run and tools/setup.sh run; README.md stays a front door (at most 200 lines); every relative
link in README.md and docs/ resolves."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAIN_JOB = "bash tools/setup.sh && .venv/bin/fastgru bench"
TESTS = "bash tools/setup.sh && .venv/bin/python -m pytest"
FENCE = re.compile(r"^```(\w*)\s*$")


def blocks(page: Path, language: str) -> list[tuple[int, str]]:
    """(first line number, code) of each fenced block of `language` in `page`."""
    found, current, start, inside = [], [], 0, None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        fence = FENCE.match(line)
        if fence and inside is None:
            inside, start, current = fence.group(1), number + 1, []
        elif line.rstrip() == "```" and inside is not None:
            if inside == language:
                found.append((start, "\n".join(current) + "\n"))
            inside = None
        elif inside is not None:
            current.append(line)
    return found


# Runs one page's blocks in one interpreter (imports are paid once per page), each block in a
# fresh namespace and a fresh temporary folder; stops at the first failure, naming its line.
RUNNER = """
import json, os, sys, tempfile, traceback
page, code_blocks = sys.argv[1], json.loads(sys.stdin.read())
for line, code in code_blocks:
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            exec(compile(code, f"{page}, block at line {line}", "exec"), {"__name__": "__main__"})
        except BaseException:
            traceback.print_exc()
            print(f"FAILED: {page}, the python block at line {line}", file=sys.stderr)
            sys.exit(1)
        finally:
            os.chdir("/")
"""


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=_name)
def test_python_blocks_run(page):
    code = blocks(page, "python")
    result = subprocess.run([sys.executable, "-c", RUNNER, _name(page)], input=json.dumps(code),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-6000:]


def _bash_lines(page: Path) -> list[str]:
    return [line.split("#")[0].strip() for _, code in blocks(page, "bash")
            for line in code.splitlines()]


def test_readme_commands_are_what_ci_and_setup_run():
    readme = _bash_lines(ROOT / "README.md")
    assert MAIN_JOB in readme and TESTS in readme
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert TESTS in ci, f".ci/run must run README's test command {TESTS!r}; it runs {ci}"
    setup = (ROOT / "tools/setup.sh").read_text()
    assert "python3 -m venv .venv" in setup and '-e ".[test,bench]"' in setup
    pin = re.search(r"torch==[\w.+]+", setup).group(0)
    assert f"pip install {pin}" in readme, f"README must install torch as setup.sh does: {pin}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["fastgru"] == "fastgru.cli:main"
    extras = project["project"]["optional-dependencies"]
    assert any(d.startswith("onnxruntime") for d in extras["bench"])  # the main job's peer
    assert any(m.startswith("slow:") for m in project["tool"]["pytest"]["ini_options"]["markers"])
    # the extras README's table names exist
    named = re.findall(r"^\| `(\w+)` \|", (ROOT / "README.md").read_text(), re.M)
    assert named and set(named) <= set(extras), set(named) - set(extras)


def test_main_job_defaults_to_the_built_in_model_against_onnxruntime():
    from fastgru.cli import build_parser

    args = build_parser().parse_args(["bench"])
    assert args.model is None and args.vs == "onnxruntime" and args.threads == "1"


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/"


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(encoding="utf-8"), re.M)
            if anchor not in {_slug(h) for h in headings}:
                broken.append(target)
    assert not broken, f"{_name(page)}: links that do not resolve: {broken}"
