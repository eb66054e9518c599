"""``python -m myapp.devstack``: the development stack in a process of its own."""

import socket
import subprocess
import sys

import pytest
import requests

from tests.devstack.flows import DISCOVERY


@pytest.mark.slow
def test_serves_until_terminated(tmp_path):
    command = [sys.executable, "-m", "myapp.devstack", "--port", "0"]
    command += ["--redirect-uri", "http://127.0.0.1:9/auth/callback"]
    command += ["--set", f"idp.key_file={tmp_path / 'key.json'}", "--set", "devstack.idp.rotate_refresh_tokens=false"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        try:
            line = process.stdout.readline()
            assert line.startswith("devstack listening on http://127.0.0.1:"), line
            base_url = line.split()[-1]
            # More idle connections than waitress lets in by default (100), as the pools of the
            # dozen BFF processes of `make bench` keep: the next request is still answered.
            host, port = base_url.removeprefix("http://").split(":")
            idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(150)]
            try:
                metadata = requests.get(base_url + DISCOVERY, timeout=5).json()
            finally:
                for connection in idle:
                    connection.close()
            assert metadata["issuer"] == base_url + "/_dev/idp"
        finally:
            process.terminate()
        assert process.wait(timeout=10) == 0
    assert (tmp_path / "key.json").exists()


@pytest.mark.slow
def test_refuses_bad_settings_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "myapp.devstack", "--set", f"idp.key_file={tmp_path / 'key.json'}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "myapp.devstack: devstack.idp.redirect_uris: required setting is missing"
    )
