"""`make bench`'s own logic that does not need a load generator: when the Node peer is measured
or skipped (and why), and the targets it computes from a run's numbers."""

import os
import socket
import stat
import types
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


@pytest.mark.parametrize(("version", "fits"), [
    ("v18.20.4", False), ("v20.18.3", False), ("v20.19.0", True), ("v20.20.2", True), ("v21.7.3", False),
    ("v22.11.0", False), ("v22.12.0", True), ("v24.1.0", True),
])
def test_only_node_versions_that_can_load_express_openid_connect_3_fit(version, fits):
    assert run.node_version_fits(version) is fits


def test_a_node_that_cannot_run_the_peer_is_skipped_with_its_version(peer):
    _, bin_dir = peer
    fake_program(bin_dir, "node", "echo v22.1.0")
    fake_program(bin_dir, "npm", "exit 0")
    assert run.node_peer() == (None, "Node.js v22.1.0 cannot run express-openid-connect 3 (it needs 20.19+ or 22.12+)")


def test_a_failed_install_is_skipped_with_what_npm_said_went_wrong(peer):
    directory, bin_dir = peer
    fake_program(bin_dir, "node", "echo v22.12.0")
    said = 'echo "npm error code ENOTFOUND" >&2; echo "npm error A complete log of this run" >&2'
    fake_program(bin_dir, "npm", said + "; exit 1")
    node, skipped = run.node_peer()
    assert node is None
    assert skipped == "npm ci in bench/node-peer failed: npm error code ENOTFOUND"


def test_the_session_cookie_header_carries_every_chunk_of_a_long_session():
    assert run.session_cookie_header({"appSession": "abc", "skipSilentLogin": "x"}) == "Cookie: appSession=abc"
    chunks = {"appSession.1": "def", "appSession.0": "abc", "appSessionX": "no", "devstack_idp_session": "no"}
    assert run.session_cookie_header(chunks) == "Cookie: appSession.0=abc; appSession.1=def"
    with pytest.raises(RuntimeError, match="no session cookie"):
        run.session_cookie_header({"auth_verification": "x"})


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
            "anonymous landing /": {"rps": 1000, "cpu_us": 300, "upstream_cpu_us": 0},
            "signed-in /posts": {"rps": 500, "cpu_us": 400, "upstream_cpu_us": 0},
            run.DASHBOARD: {"rps": 250, "cpu_us": 750, "upstream_cpu_us": 700},
        },
        "refresh_storm": {"provider_refreshes": 1},
        "streaming": {"rss_growth_mib": 1.5},
    }


def test_targets_compare_b_with_the_node_peer_when_it_was_measured(capsys):
    row = {"D": measured(2000, p50=0.5), "N": measured(1000, 500), "R": measured(800, 700),
           "B": measured(900, 600, p50=1.2), "E": measured(600, 1200)}
    results = results_of(row)
    targets = results["targets"] = run.check_targets(results, [1])
    run.print_table(results | {"node_peer": "measured", "tracing": {}, "dpop": {}, "chart": "skipped"}, [1])
    table_row = capsys.readouterr().out.splitlines()[2].split()
    assert table_row[:7] == ["1", "2000", "1000", "800", "900", "nan", "600"]  # c, D, N, R, B, B-PG, E
    assert table_row[-1] == "0.50"  # CPU B/E
    assert targets["B's CPU per call / the Node peer's < 1"] == {"1": 0.5}
    assert targets["B/E throughput (not a target)"] == {"1": 1.5}
    assert targets["B/N throughput >= 0.85"] == {"1": 0.9}
    assert targets["B CPU per call - N's <= 150 us"] == {"1": 100}
    assert targets["B-D p50 at c=1 <= 0.4 ms"] == 0.7
    assert targets["signed-in /posts / anonymous landing >= 0.75"] == 0.5
    assert targets["signed-in dashboard / anonymous landing >= 0.5"] == 0.25


def test_the_pages_are_also_compared_by_myapps_cpu_per_page_beside_the_apis_share():
    """The throughput ratio of a page that calls the demo API pays for the API's CPU on the same
    cores; myapp's own CPU per page says what the ratio would be with the machine to itself."""
    targets = run.check_targets(results_of({"D": measured(2000), "N": measured(1000), "R": measured(800),
                                            "B": measured(900)}), [1])
    assert targets["landing / page in myapp's CPU per page (not a target)"] == {"/posts": 0.75, "dashboard": 0.4}
    assert targets["the demo API's CPU per dashboard (not a target)"] == 700


def test_a_target_is_judged_on_its_exact_value_not_the_rounded_one_shown(capsys):
    row = {"D": measured(2000, p50=0.5), "N": measured(1000, 500), "R": measured(800, 700),
           "B": measured(845, 600, p50=0.9)}
    results = results_of(row)
    results["pages"]["signed-in /posts"]["rps"] = 746  # 0.746 of the landing page
    results["targets"] = run.check_targets(results, [1])
    verdicts = results["verdicts"] = run.target_verdicts(results, [1])
    assert results["targets"]["signed-in /posts / anonymous landing >= 0.75"] == 0.75  # as shown
    assert verdicts["signed-in /posts / anonymous landing >= 0.75"] == "not met (0.746)"
    assert results["targets"]["B/N throughput >= 0.85"] == {"1": 0.84}
    assert verdicts["B/N throughput >= 0.85"] == "not met at 1 (0.845)"
    assert verdicts["B/R throughput >= 1.2"] == "not met at 1 (1.056)"
    assert verdicts["B CPU per call - N's <= 150 us"] == "met"
    assert verdicts["B-D p50 at c=1 <= 0.4 ms"] == "met"
    assert verdicts["refreshes in the storm == 1"] == "met"
    assert "landing / page in myapp's CPU per page (not a target)" not in verdicts
    run.print_table(results | {"node_peer": "skipped", "tracing": {}, "dpop": {}, "chart": "skipped"}, [1])
    printed = capsys.readouterr().out
    assert "signed-in /posts / anonymous landing >= 0.75: 0.75  -> not met (0.746)" in printed
    assert "B/R throughput >= 1.2: {'1': 1.06}  -> not met at 1 (1.056)" in printed


def test_targets_leave_the_node_peer_out_when_it_was_skipped(capsys):
    row = {"D": measured(2000), "N": measured(1000, 500), "R": measured(800, 700), "B": measured(900, 600)}
    results = results_of(row)
    results["targets"] = run.check_targets(results, [1])
    assert not any("Node" in name or "B/E" in name for name in results["targets"])
    results |= {"node_peer": "skipped: Node.js (node and npm) is not installed", "tracing": {}, "dpop": {},
                "chart": "skipped"}
    run.print_table(results, [1])
    printed = capsys.readouterr().out
    assert "E (the Node peer): skipped: Node.js (node and npm) is not installed" in printed


def test_the_table_says_what_holding_b_to_one_cpu_gave(capsys):
    row = {"D": measured(2000), "N": measured(1000, 500), "R": measured(800, 700), "B": measured(900, 600)}
    results = results_of(row)
    results["targets"] = run.check_targets(results, [1])
    held = {"8": {"B": {"rps": 700, "cpu_us": 1200}, "held": {"rps": 1300, "cpu_us": 720}, "N": {"rps": 1100},
                  "N held": {"rps": 1625, "cpu_us": 560}, "held_over_B": 1.86, "held_over_N": 1.18,
                  "held_over_N_held": 0.8}}
    results |= {"node_peer": "skipped", "tracing": {}, "dpop": {}, "chart": "skipped", "held": held}
    run.print_table(results, [1])
    assert ("  held to one CPU (cpu_affinity = auto), c=8: 1300 req/s at 720 us each, 1.86x B as it runs by "
            "default, 1.18x N; N held to the same CPU: 1625 req/s at 560 us each, B held / N held 0.8"
            ) in capsys.readouterr().out.splitlines()
    # A held process that let go of its CPU during the bench: its numbers are not a held process's.
    results["held_let_go"] = "let go of CPU 1 (cpu_affinity = auto): other processes ran on it 40% of the time ..."
    run.print_table(results, [1])
    assert ("  NOT HELD THROUGHOUT, the held process said: let go of CPU 1 (cpu_affinity = auto): other "
            "processes ran on it 40% of the time ...") in capsys.readouterr().out.splitlines()
    # Not measured (held by --pin already, or a process that could not hold itself): why.
    del results["held"], results["held_let_go"]
    results["held_said"] = "not held to a CPU (cpu_affinity = auto): its cgroup has a CPU quota (cpu.max 1 1), ..."
    run.print_table(results, [1])
    assert ("  held to one CPU (cpu_affinity = auto): not held to a CPU (cpu_affinity = auto): its cgroup has a CPU "
            "quota (cpu.max 1 1), ...") in capsys.readouterr().out.splitlines()


def test_the_table_says_what_myapps_server_gives_the_bare_proxy(capsys):
    row = {"D": measured(2000), "N": measured(1000, 500), "R": measured(800, 700), "B": measured(900, 600)}
    results = results_of(row)
    results["targets"] = run.check_targets(results, [1])
    server = {"8": {"B": {"rps": 1400, "cpu_us": 500}, "N": {"rps": 1200, "cpu_us": 560},
                    "N on myapp's server": {"rps": 1500, "cpu_us": 450}, "N_on_myapp_server_over_N": 1.25,
                    "B_over_N_on_myapp_server": 0.93}}
    results |= {"node_peer": "skipped", "tracing": {}, "dpop": {}, "chart": "skipped", "held_said": "-",
                "server": server}
    run.print_table(results, [1])
    assert ("  N on myapp's server, c=8: 1500 req/s at 450 us each, 1.25x N; B 1400 req/s at 500 us each, "
            "B / N on myapp's server 0.93") in capsys.readouterr().out.splitlines()


def test_side_by_side_loads_each_in_turn_the_other_way_round_at_32(monkeypatch):
    loaded = []

    def fake_wrk(url, *, connections, duration, headers=(), pids=()):
        loaded.append((url, connections))
        return {"rps": 100.0 * len(loaded), "cpu_us_per_request": {str(pids[0]): 10 * len(loaded)},
                "p50_ms": 1.0, "non_2xx": 0}

    monkeypatch.setattr(run, "wrk", fake_wrk)
    order = [("a", "http://a", [], types.SimpleNamespace(pid=1)), ("b", "http://b", [], types.SimpleNamespace(pid=2))]
    measured = run.side_by_side(order, 5, lambda runs: {"a_over_b": runs["a"]["rps"] / runs["b"]["rps"]})
    assert loaded == [("http://a", 8), ("http://b", 8), ("http://b", 32), ("http://a", 32)]
    assert measured["8"]["a"] == {"rps": 100.0, "cpu_us": 10, "p50_ms": 1.0, "non_2xx": 0}
    assert measured["8"]["a_over_b"] == 0.5 and measured["32"]["a_over_b"] == 400 / 300


def test_a_held_server_that_let_go_of_its_cpu_is_found_in_its_log(tmp_path):
    (tmp_path / "held.log").write_text(
        "held to CPU 1 (cpu_affinity = auto)\nlistening on http://127.0.0.1:9\n"
        "WARNING:myapp.server:let go of CPU 1 (cpu_affinity = auto): other processes ran on it 40% ...\n"
    )
    assert run.let_go(tmp_path, "held") == "let go of CPU 1 (cpu_affinity = auto): other processes ran on it 40% ..."
    (tmp_path / "held.log").write_text("held to CPU 1 (cpu_affinity = auto)\nlistening on http://127.0.0.1:9\n")
    assert run.let_go(tmp_path, "held") is None


def test_what_a_held_server_said_when_it_started_is_read_from_its_log(tmp_path):
    processes = types.SimpleNamespace(start=lambda name, args, env: name)
    for said, cpu in [("held to CPU 1 (cpu_affinity = auto)", 1),
                      ("not held to a CPU (cpu_affinity = auto): its cgroup has a CPU quota (cpu.max 1 1), ...", None)]:
        (tmp_path / "held.log").write_text(f"{said}\nlistening on http://127.0.0.1:9\n")
        assert run.start_held(processes, ["held"], tmp_path, {"held": 9}) == [("held", said, cpu)]


def test_a_peer_that_does_not_start_is_skipped_not_the_bench(tmp_path):
    fake_program(tmp_path, "node", "echo cannot load express-openid-connect; exit 1")
    processes = run.Processes(tmp_path)
    urls = {"idp": "http://127.0.0.1:9", "node": "http://127.0.0.1:9"}
    target, skipped = run.start_node_peer(processes, str(tmp_path / "node"), urls, 9)
    assert target is None
    assert skipped.startswith("bench: E did not start:\ncannot load express-openid-connect")


def test_a_peer_that_cannot_sign_in_is_stopped_and_skipped(tmp_path):
    fake_program(tmp_path, "node", 'echo "listening on http://127.0.0.1:9"; exec sleep 60')
    processes = run.Processes(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]  # nothing listens there once closed
    urls = {"idp": f"http://127.0.0.1:{port}", "node": f"http://127.0.0.1:{port}"}
    try:
        target, skipped = run.start_node_peer(processes, str(tmp_path / "node"), urls, port)
        assert target is None
        assert skipped.startswith("the Node peer did not sign in and proxy: ConnectionError")
        assert processes.running[0].wait(timeout=10) is not None  # stopped
    finally:
        processes.stop()


def test_the_targets_b_misses_are_measured_for_b_held_too(monkeypatch, capsys):
    """D, B and held B at one connection in turn, then the held process's landing page and
    dashboard: each p50 over D's, and the dashboard over the landing page, beside the targets."""
    loaded = []
    answers = {"http://d/ping": 0.40, "http://b/ping": 0.86, "http://held/api/demo/ping": 0.75}

    def fake_wrk(url, *, connections, duration, headers=(), pids=()):
        loaded.append((url, connections, duration, list(headers)))
        dashboard = any(header.startswith("Cookie") for header in headers)
        return {"rps": 1500.0 if dashboard else 3200.0, "p50_ms": answers.get(url, 2.0), "non_2xx": 0,
                "cpu_us_per_request": {str(pid): 300 * pid for pid in pids}}

    monkeypatch.setattr(run, "wrk", fake_wrk)
    targets = {"D": ("http://d/ping", ["Authorization: Bearer t"], None),
               "B": ("http://b/ping", ["Cookie: s=1", "X-CSRF: 1"], types.SimpleNamespace(pid=9))}
    two = run.held_targets(targets, {"held": "http://held"}, "Cookie: s=1", types.SimpleNamespace(pid=1),
                           types.SimpleNamespace(pid=2), 10)
    loads = [(url, connections) for url, connections, duration, _ in loaded if duration == 10]
    assert loads == [("http://d/ping", 1), ("http://b/ping", 1), ("http://held/api/demo/ping", 1),
                        ("http://held/", 8), ("http://held/", 8)]
    assert loaded[-1][3] == ["Cookie: s=1"] and loaded[-3][3] == []  # the dashboard signed in, the landing not
    assert two["p50_over_D_at_1"] == {"B": 0.46, "held": 0.35}
    assert two["dashboard_over_landing"] == 0.47
    assert two["pages"][run.DASHBOARD] == {"rps": 1500.0, "cpu_us": 300, "upstream_cpu_us": 600, "non_2xx": 0}

    row = {"D": measured(2000), "N": measured(1000, 500), "R": measured(800, 700),
           "B": measured(900, 600)}
    results = results_of(row) | {"held_targets": two}
    results["targets"] = run.check_targets(results, [1])
    results["verdicts"] = run.target_verdicts(results, [1])
    assert results["targets"]["held B-D p50 at c=1, ms (not a target)"] == 0.35
    assert results["targets"]["held dashboard / held landing (not a target)"] == 0.47
    assert not any(name.startswith("held") for name in results["verdicts"])  # B of the targets is judged alone
    run.print_table(results | {"node_peer": "skipped", "tracing": {}, "dpop": {}, "chart": "skipped"}, [1])
    assert ("  held to one CPU (cpu_affinity = auto), the targets B misses: p50 over D at c=1 0.35 ms (B as it runs "
            "by default 0.46 ms, the same minute); dashboard / landing 0.47 (1500 / 3200 req/s, both served held)"
            ) in capsys.readouterr().out.splitlines()
    # Not measured (no held process): neither figure is made up.
    del results["held_targets"]
    assert not any(name.startswith("held") for name in run.check_targets(results, [1]))
