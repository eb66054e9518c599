"""Real HTTP on loopback for tests: the development stack, or any WSGI app, in a waitress thread.

    with running_devstack() as base_url:                    # http://127.0.0.1:PORT
        requests.get(base_url + "/_dev/idp/.well-known/openid-configuration")

    with running_devstack(**{"devstack.idp.rotate_refresh_tokens": "false"}) as base_url: ...

Settings are full ``devstack.*`` names; unset ones get test defaults (the issuer at the chosen
port, the client of tests/conftest.py). Shutdown closes every socket.
"""

import atexit
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from joserfc.jwk import RSAKey

from myapp.devstack import make_app
from tests.conftest import TEST_PUBLIC_URL
from tests.support.servers import running_wsgi

CLIENT_ID = "myapp-test"
CLIENT_SECRET = "test-client-secret"
REDIRECT_URI = TEST_PUBLIC_URL + "/auth/callback"
POST_LOGOUT_REDIRECT_URI = TEST_PUBLIC_URL + "/"

_key_directory: Path | None = None


def shared_key_file() -> Path:
    """One provider key per test process: generated once, deleted at exit."""
    global _key_directory
    if _key_directory is None:
        _key_directory = Path(tempfile.mkdtemp(prefix="myapp-devstack-"))
        atexit.register(shutil.rmtree, _key_directory, ignore_errors=True)
    return _key_directory / "idp-key.json"


def provider_key() -> RSAKey:
    """The private key of every devstack started with the default key file, to forge test tokens."""
    return RSAKey.import_key(json.loads(shared_key_file().read_text()))


def devstack_settings(base_url: str, **settings) -> dict:
    defaults = {
        "devstack.idp.issuer": base_url + "/_dev/idp",
        "devstack.idp.client_id": CLIENT_ID,
        "devstack.idp.client_secret": CLIENT_SECRET,
        "devstack.idp.redirect_uris": REDIRECT_URI,
        "devstack.idp.post_logout_redirect_uris": POST_LOGOUT_REDIRECT_URI,
        "devstack.idp.key_file": str(shared_key_file()),
    }
    # "{base}" in a value stands for the stack's own base URL (known only once it listens).
    return {**defaults, **{k: v.replace("{base}", base_url) if isinstance(v, str) else v for k, v in settings.items()}}


@contextmanager
def running_devstack(outbuf_high_watermark: int | None = None, **settings) -> Iterator[str]:
    """The standalone development stack on a free loopback port; yields its base URL."""
    options = {"outbuf_high_watermark": outbuf_high_watermark} if outbuf_high_watermark else {}
    with running_wsgi(lambda base_url: make_app(devstack_settings(base_url, **settings)), **options) as base_url:
        yield base_url
