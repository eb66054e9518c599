"""myapp: a backend-for-frontend that keeps OpenID Connect tokens on the server."""

import logging

from pyramid.config import Configurator

from myapp.models import Database, SchemaError
from myapp.resources import Permission, Root
from myapp.settings import SettingsError, load_settings, production_cautions

log = logging.getLogger(__name__)


def main(global_config, **settings):
    """The WSGI application (``paste.app_factory``): every key of ``[app:main]`` is a setting."""
    return make_app(settings, config_file=(global_config or {}).get("__file__"))


def make_app(settings: dict, *, database: Database | None = None, config_file: str | None = None):
    """Parse the settings, include each part, scan. ``database`` replaces the one
    ``sqlalchemy.url`` names: tests hand in one whose work is rolled back."""
    settings = dict(settings)
    try:
        settings["myapp"] = load_settings(settings)
        for caution in production_cautions(settings["myapp"]):
            log.warning("myapp: %s", caution)
        settings["config_file"] = config_file
        with Configurator(settings=settings, root_factory=Root) as config:
            if database is not None:
                config.registry[Database] = database
            config.set_default_permission(Permission.UNDECLARED)
            config.include("pyramid_jinja2")
            config.include(".request")
            config.include(".models")
            config.include(".services")
            config.include(".security")
            config.include(".headers")
            config.include(".observability")
            config.include(".tracing")
            config.include(".tweens")
            config.include(".stepup")
            config.include(".routes")
            config.include(".views")
            config.scan(".views")
    except SettingsError as e:
        raise SystemExit("\n".join(f"myapp: {problem}" for problem in e.problems)) from None
    except SchemaError as e:
        raise SystemExit(f"myapp: {e}") from None
    return config.make_wsgi_app()
