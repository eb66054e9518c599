"""`make bench`'s own logic that does not need a load generator: when the Node peer is measured
or skipped (and why), and the targets it computes from a run's numbers."""

import os
import stat
from pathlib import Path

import pytest

from bench import run


def fake_program(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def peer(tmp_path, monkeypatch):
    """An empty peer directory with a lock file, and a PATH holding only the fakes made in ``bin``."""
    directory = tmp_path / "node-peer"
    directory.mkdir()
    (directory / "package-lock.json").write_text("{}")
    monkeypatch.setattr(run, "NODE_PEER", directory)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return directory, bin_dir


def test_without_node_the_peer_is_skipped_saying_so(peer):
    assert run.node_peer() == (None, "Node.js (node and npm) is not installed")


def test_a_node_too_old_for_express_openid_connect_is_skipped_with_its_version(peer):
    _, bin_dir = peer
    fake_program(bin_dir, "node", "echo v20.18.3")
    fake_program(bin_dir, "npm", "exit 0")
    assert run.node_peer() == (None, "Node.js v20.18.3 is older than express-openid-connect needs (20.19)")


def test_a_failed_install_is_skipped_with_npm_s_last_words(peer):
    directory, bin_dir = peer
    fake_program(bin_dir, "node", "echo v22.1.0")
    fake_program(bin_dir, "npm", 'echo "npm error network request failed" >&2; echo "npm error A complete log" >&2; exit 1')
    node, skipped = run.node_peer()
    assert node is None
    assert skipped == "npm ci in bench/node-peer failed: npm error A complete log"


def test_packages_are_installed_once_and_again_when_the_lock_changes(peer):
    directory, bin_dir = peer
    calls = directory / "npm-calls"
    fake_program(bin_dir, "node", "echo v20.19.0")
    (directory / "node_modules").mkdir()
    # Only the shell's own commands: PATH holds nothing but the fakes.
    fake_program(bin_dir, "npm", f'echo "$@" >> {calls}; : > node_modules/.package-lock.json')
    assert run.node_peer() == (str(bin_dir / "node"), None)
    assert calls.read_text().splitlines() == ["ci --omit=dev --no-audit --no-fund"]
    assert run.node_peer()[0] is not None
    assert len(calls.read_text().splitlines()) == 1  # installed: not again
    installed = directory / "node_modules" / ".package-lock.json"
    older = installed.stat().st_mtime - 10
    os.utime(installed, (older, older))  # the lock is now newer than what is installed
    assert run.node_peer()[0] is not None
    assert len(calls.read_text().splitlines()) == 2


def measured(rps, cpu=0, p50=1.0):
    return {"rps": rps, "proxy_cpu_us": cpu, "p50_ms": p50}


def results_of(row: dict) -> dict:
    return {
        "proxy": {"1": row},
        "pages": {
            "anonymous landing /": {"rps": 1000},
            "signed-in /posts": {"rps": 500},
            "signed-in dashboard / (with its server-side API call)": {"rps": 250},
        },
        "refresh_storm": {"provider_refreshes": 1},
        "streaming": {"rss_growth_mib": 1.5},
    }


def test_targets_compare_b_with_the_node_peer_when_it_was_measured():
    row = {"D": measured(2000, p50=0.5), "N": measured(1000, 500), "R": measured(800, 700),
           "B": measured(900, 600, p50=1.2), "E": measured(600, 1200)}
    targets = run.check_targets(results_of(row), [1])
    assert targets["B's CPU per call / the Node peer's < 1"] == {"1": 0.5}
    assert targets["B/E throughput (not a target)"] == {"1": 1.5}
    assert targets["B/N throughput >= 0.85"] == {"1": 0.9}
    assert targets["B CPU per call - N's <= 150 us"] == {"1": 100}
    assert targets["B-D p50 at c=1 <= 0.4 ms"] == 0.7
    assert targets["signed-in /posts / anonymous landing >= 0.75"] == 0.5


def test_targets_leave_the_node_peer_out_when_it_was_skipped():
    row = {"D": measured(2000), "N": measured(1000, 500), "R": measured(800, 700), "B": measured(900, 600)}
    targets = run.check_targets(results_of(row), [1])
    assert not any("Node" in name or "B/E" in name for name in targets)
