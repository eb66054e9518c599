"""The dependency floors in setup.py stay past every published advisory that touches how myapp
uses the package. `make audit` checks what is installed; this keeps a floor from sliding back."""

import ast
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import ROOT

# package: (the first release without the advisory, the advisories)
ADVISORIES = {
    "urllib3": ("2.7.0", "decompression bombs in streamed and redirected responses, fixed in 2.6.0 and 2.7.0"),
    "httptools": ("0.6.3", "the llhttp it bundles: CVE-2023-30589 (fixed by 0.6.0), CVE-2024-27982 (by 0.6.3)"),
    "joserfc": ("1.6.7", "GHSA-wphv-vfrh-23q5"),
    "authlib": ("1.9.0", "the advisories fixed by 1.9.0"),
    "requests": ("2.32.4", "CVE-2024-47081: .netrc credentials leaked to another host"),
    "webob": ("1.8.8", "CVE-2024-42353: open redirect in Location normalisation"),
    "jinja2": ("3.1.6", "CVE-2024-56201, CVE-2024-56326, CVE-2025-27516: sandbox escapes"),
    "waitress": ("3.0.1", "CVE-2024-49768 (request pipelining race), CVE-2024-49769 (DoS by closed sockets)"),
    "pyramid": ("2.0.2", "CVE-2023-40587: static view path traversal"),
    "cryptography": ("44.0.1", "CVE-2024-12797 in the OpenSSL its wheels bundle"),
    "idna": ("3.7", "CVE-2024-3651: quadratic encoding of crafted names"),
    "certifi": ("2024.7.4", "CVE-2024-39689: GLOBALTRUST roots removed"),
}


def floors() -> dict[str, Version]:
    tree = ast.parse(Path(ROOT / "setup.py").read_text())
    requires = next(
        node.value for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "requires" for t in node.targets)
    )
    result = {}
    for item in ast.literal_eval(requires):
        requirement = Requirement(item)
        lower = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
        result[requirement.name.lower()] = lower[0] if lower else None
    return result


@pytest.mark.parametrize("package", sorted(ADVISORIES))
def test_the_floor_is_past_every_known_advisory(package):
    fixed, advisories = ADVISORIES[package]
    floor = floors().get(package)
    assert floor is not None, f"{package} is not pinned in setup.py; it must be at least {fixed} ({advisories})"
    assert floor >= Version(fixed), f"{package}>={floor} admits {advisories}; raise the floor to {fixed}"


def test_every_runtime_dependency_has_a_floor():
    assert [name for name, floor in floors().items() if floor is None] == []
