"""An operator's install, as docs/deployment.md describes it: a wheel in a virtualenv of its own,
outside the checkout; the shipped production.ini copied to a folder of its own; the database
migrated from there; several processes from that one file, each on its own port; each scraped.

The wheel is built and installed offline: the virtualenv borrows the dependencies already
installed for the tests (a .pth file) rather than downloading them.
"""

import contextlib
import os
import queue
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest
import requests

from myapp.models import SCHEMA_REVISION
from tests.conftest import ROOT, TEST_ISSUER, TEST_KEY, TEST_PUBLIC_URL, private_schema

pytestmark = pytest.mark.slow

# A guard against a process that hangs, not a measurement: starting takes a second or two.
START_LIMIT = 120


def run(command, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a virtualenv with the myapp wheel installed in it."""
    work = tmp_path_factory.mktemp("installed")
    source = work / "source"
    source.mkdir()
    shutil.copy(ROOT / "setup.py", source)
    for folder in ("myapp", "alembic"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "--quiet"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", work / "dist", source])
    [wheel] = (work / "dist").glob("myapp-*.whl")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    # Appended to sys.path after the venv's own site-packages: myapp comes from the wheel.
    (Path(purelib) / "borrowed-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel])
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    where = run([python, "-c", "import myapp; print(myapp.__file__)"], cwd=work, env=environ).stdout
    assert where.startswith(str(venv)), f"myapp must come from the wheel, not from {where}"
    return venv / "bin"


@pytest.fixture
def backend_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'var' / 'myapp.sqlite'}"
        return
    with private_schema("myapp_installed") as url:
        yield url


@pytest.fixture
def etc(tmp_path, backend_url):
    """A folder of its own holding production.ini with its metrics block uncommented, as the
    docs say, and the environment production.ini reads."""
    folder = tmp_path / "etc"
    folder.mkdir()
    (tmp_path / "var").mkdir()
    text = (ROOT / "production.ini").read_text()
    (folder / "production.ini").write_text(re.sub(r"^# (myapp\.metrics\.\w+ = )", r"\1", text, flags=re.MULTILINE))
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    environ.update(
        MYAPP_DATABASE_URL=backend_url,
        MYAPP_PUBLIC_URL=TEST_PUBLIC_URL,
        MYAPP_OIDC_ISSUER=TEST_ISSUER,
        MYAPP_OIDC_CLIENT_ID="myapp",
        MYAPP_OIDC_CLIENT_SECRET="an-installed-secret",
        MYAPP_TOKEN_KEYS=TEST_KEY,
    )
    return folder, environ


class Pserve:
    """`pserve production.ini http_port=N` in the ini's folder, as the systemd unit in
    docs/deployment.md runs it (N = 0 here: a free port, read back from waitress's log line)."""

    def __init__(self, bin_dir: Path, etc: Path, environ: dict, http_port: int = 0):
        self.process = subprocess.Popen(
            [bin_dir / "python", "-m", "pyramid.scripts.pserve", "production.ini", f"http_port={http_port}"],
            cwd=etc, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.output: list[str] = []
        self.lines: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stderr:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def url(self) -> str:
        while True:
            line = self.lines.get(timeout=START_LIMIT)
            assert line is not None, "pserve stopped:\n" + "".join(self.output)
            if match := re.search(r"Serving on (http://127\.0\.0\.1:\d+)", line):
                return match.group(1)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)
        self.reader.join(timeout=30)
        self.process.stderr.close()


@contextlib.contextmanager
def processes(count: int, *args):
    """Several processes from one production.ini, started together; yields their URLs and logs."""
    started = []
    try:
        for _ in range(count):
            started.append(Pserve(*args))
        yield [p.url() for p in started], [p.output for p in started]
    finally:
        for process in started:
            process.stop()


@pytest.mark.parametrize(
    "backend_url, migrations",
    [
        # The issue's reproduction first: alembic's own command, the ini in a folder of its own.
        ("sqlite", ["alembic", "myapp-migrate"]),
        pytest.param("postgresql", ["myapp-migrate"], marks=pytest.mark.postgresql),
    ],
    indirect=["backend_url"],
    ids=["sqlite", "postgresql"],
)
def test_an_installed_package_migrates_and_serves_several_processes(installed, etc, migrations):
    folder, environ = etc
    said = []
    for command in migrations:
        if command == "alembic":
            result = run([installed / "python", "-m", "alembic", "-c", "production.ini", "upgrade", "head"], cwd=folder, env=environ)
            assert re.search(rf"Running upgrade \S* -> {SCHEMA_REVISION}", result.stderr), "production.ini shows each step"
        else:
            said.append(run([installed / "myapp-migrate", "production.ini"], cwd=folder, env=environ).stdout)
    done = "already up to date" if migrations[0] == "alembic" else "upgraded from an unmigrated database"
    assert said == [f"database at revision {SCHEMA_REVISION} (head), {done}\n"]

    with processes(2, installed, folder, environ) as (urls, logs):
        assert len(set(urls)) == 2
        for url in urls:
            assert requests.get(url + "/healthz", timeout=30).status_code == 200
            assert requests.get(url + "/readyz", timeout=30).status_code == 200
            # Each process scraped on its own port from this machine; a request through nginx
            # carries the browser's address in X-Forwarded-For, so /metrics stays refused to it.
            metrics = requests.get(url + "/metrics", timeout=30)
            assert metrics.status_code == 200 and "myapp_active_sessions" in metrics.text
            proxied = requests.get(url + "/metrics", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=30)
            assert proxied.status_code == 403
    assert "Traceback" not in "".join(line for log in logs for line in log)
