"""The Makefile and README.md agree: `make help` describes every target, the README lists each one
and starts with `make run` and `make test`, and its map of the BFF and the sample application
names files that exist."""

import os
import re
import subprocess

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def targets() -> list[str]:
    return re.findall(r"^([a-z][a-z0-9-]*):(?!=)", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)


def make(*arguments) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    result = subprocess.run(["make", "--no-print-directory", *arguments], cwd=ROOT, env=environ, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_help_describes_every_target():
    listing = make("help")
    described = dict(re.findall(r"^  make (\S+) +(\S.*)$", listing, flags=re.MULTILINE))
    assert sorted(described) == sorted(targets())
    assert {"help", "run", "test", "e2e", "clean"} <= set(described)
    assert make() == listing, "`make` alone lists the targets too"


def test_readme_starts_with_make_run_and_make_test():
    assert README.startswith("# myapp\n\n```sh\n")
    first_block = README.split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split("#", 1)[0].strip() for line in first_block.splitlines()] == ["make run", "make test"]


def test_readme_lists_every_make_target():
    assert [t for t in targets() if f"| `make {t}` |" not in README] == []


def test_readme_names_files_that_exist():
    paths = set(re.findall(r"`((?:myapp|alembic)/[^`\s]*)`", README))
    assert len(paths) > 20
    assert [p for p in sorted(paths) if not list(ROOT.glob(p.rstrip("/")))] == []
