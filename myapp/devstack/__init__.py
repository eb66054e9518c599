"""The development stack: an OpenID provider (/_dev/idp) and a demo upstream API (/_dev/api).

For development and tests only. Nothing else in myapp imports this package: development.ini adds
it to the BFF with ``pyramid.includes = myapp.devstack``, and :func:`make_app` serves it alone
(tests, benchmarks, ``python -m myapp.devstack``). Its settings are the ``devstack.*`` keys,
described in docs/devstack.md.
"""

from collections.abc import Mapping

from pyramid.config import Configurator
from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.tweens import INGRESS

from myapp.devstack.api import APIS, MAX_BYTES, DemoAPI, PublishedKeySet
from myapp.devstack.dpop import ServerNonces
from myapp.devstack.provider import PROVIDERS, Provider
from myapp.devstack.settings import load_devstack_settings
from myapp.request import takes_bodies_up_to
from myapp.server import OWN_THREADS
from myapp.settings import SettingsError


def includeme(config):
    bff_settings = config.get_settings().get("myapp")
    # myapp.settings refuses this include in production already; a second lock costs nothing.
    if bff_settings is not None and not bff_settings.is_development:
        raise SettingsError("pyramid.includes: the development stack (myapp.devstack) is refused in production")
    settings = load_devstack_settings(config.get_settings())
    # One origin, one server nonce (RFC 9449 section 8 and 9) for whichever of them demands one.
    nonces = ServerNonces()
    providers = config.registry[PROVIDERS] = {name: Provider(p, nonces=nonces) for name, p in settings.providers.items()}
    # Unless told to fetch them from elsewhere, the APIs read the providers' keys in-process, and
    # accept the tokens of every issuer here (each checked with its own keys).
    in_process = "devstack.api.jwks_uri" not in config.get_settings()
    issuers = {p.issuer: PublishedKeySet([p.signer.public_key]) for p in providers.values()} if in_process else None
    config.registry[APIS] = {name: DemoAPI(api, issuers=issuers, nonces=nonces) for name, api in settings.apis.items()}
    for name in providers:
        config.add_static_view(
            f"_dev/{name}/static", "myapp.devstack:static", cache_max_age=3600, permission=NO_PERMISSION_REQUIRED
        )
    # The BFF calls these paths in this same process: served by threads of their own
    # (myapp.server.PrefixDispatcher), calls waiting for them cannot leave them none.
    config.registry[OWN_THREADS] = ("/_dev/",)
    # Its API's echo and upload take a body of any size, up to waitress's own limit (1 GiB): myapp's
    # server, which refuses a body larger than any route takes (myapp.request.LARGEST_BODY), lets
    # them through in development.
    takes_bodies_up_to(config.registry, MAX_BYTES)
    config.include(".views")
    config.include(".api")
    config.scan(".views")
    config.scan(".api")


def make_app(settings: Mapping[str, object]):
    """The development stack alone, as a WSGI application, configured by ``devstack.*`` keys."""
    with Configurator(settings=dict(settings)) as config:
        config.include(includeme)
        # Included in the BFF (development.ini), the BFF's own tween does this: an address that
        # is not UTF-8 (/_dev/api/echo/%ff) is a 400, not Pyramid's UnicodeDecodeError, a 500.
        config.add_tween("myapp.tweens.unreadable_request_tween_factory", under=INGRESS)
    return config.make_wsgi_app()
