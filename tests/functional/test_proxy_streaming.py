"""50 MiB through the proxy in each direction without holding it in memory.

Python's own allocations are traced (``tracemalloc``) across every thread of this process: the
BFF, the demo API behind it and the client. A proxy that buffered the body would show ~50 MiB.
"""

import hashlib
import tracemalloc

import pytest

from tests.support.live import api, bff_in_thread, devstack_for, listener, sign_in

SIZE = 50 * 1024 * 1024
CHUNK = 64 * 1024
BUDGET = 8 * 1024 * 1024


class GeneratedFile:
    """A file-like body of ``size`` deterministic bytes, produced as it is read."""

    def __init__(self, size):
        self.len = size
        self.position = 0
        self.digest = hashlib.sha256()

    def read(self, amount=-1):
        amount = self.len - self.position if amount is None or amount < 0 else min(amount, self.len - self.position)
        data = bytes((self.position + i) % 256 for i in range(min(amount, 256)))
        data = (data * (amount // 256 + 1))[:amount] if amount >= 256 else data
        self.position += amount
        self.digest.update(data)
        return data


@pytest.fixture
def live(committed_database_url, committed):
    sock, public_url = listener()
    settings = {"myapp.proxy.max_body_bytes": str(SIZE + 1024)}
    with devstack_for(public_url) as idp, bff_in_thread(committed_database_url, sock, public_url, idp, **settings) as (url, _):
        yield url, sign_in(url, "alice")


@pytest.mark.slow
def test_download_streams(live):
    url, browser = live
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        received = 0
        with api(browser, url + f"/api/demo/bytes?n={SIZE}", stream=True) as response:
            assert response.status_code == 200
            assert response.headers["Content-Length"] == str(SIZE)
            for chunk in response.iter_content(CHUNK):
                received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == SIZE
    assert peak < BUDGET, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.slow
def test_upload_streams(live):
    url, browser = live
    body = GeneratedFile(SIZE)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        response = api(
            browser,
            url + "/api/demo/upload",
            method="POST",
            data=body,
            headers={"Origin": url, "Content-Type": "application/octet-stream"},
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 200, response.text
    assert response.json() == {"bytes": SIZE, "sha256": body.digest.hexdigest()}
    assert peak < BUDGET, f"peak {peak / 2**20:.1f} MiB"
