"""myapp: a backend-for-frontend that keeps OpenID Connect tokens on the server."""

import inspect
import logging

from pyramid.config import Configurator
from pyramid.path import DottedNameResolver
from pyramid.settings import aslist

from myapp.models import Database, SchemaError
from myapp.observability import configure_logging
from myapp.resources import Permission, Root
from myapp.settings import SettingsError, load_settings, production_cautions

log = logging.getLogger(__name__)


SCRIPT_OPTION = "myapp_script"
"""Set in ``global_config`` by the operator commands (``myapp.scripts``), which boot the app to do
one thing and leave: the start-up cautions are for the server's log, and a command run by cron
would mail them every time (``myapp-show-config`` prints them)."""


def main(global_config, **settings):
    """The WSGI application (``paste.app_factory``): every key of ``[app:main]`` is a setting."""
    global_config = global_config or {}
    return make_app(settings, config_file=global_config.get("__file__"), cautions=SCRIPT_OPTION not in global_config)


def make_app(settings: dict, *, database: Database | None = None, config_file: str | None = None,
             cautions: bool = True):
    """Parse the settings, include each part, scan. ``database`` replaces the one
    ``sqlalchemy.url`` names: tests hand in one whose work is rolled back. ``cautions``: log what
    production would rather not have (``settings.production_cautions``)."""
    settings = dict(settings)
    try:
        settings["myapp"] = load_settings(settings)
        # Before the first line the app logs (the cautions), so that every line is in the log's format.
        configure_logging(settings["myapp"].log_format)
        for caution in production_cautions(settings["myapp"]) if cautions else ():
            log.warning("myapp: %s", caution)
        settings["config_file"] = config_file
        _importable(settings, "pyramid.includes", "pyramid.tweens")
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


def _importable(settings: dict, *names: str) -> None:
    """Each dotted name the settings ``names`` list, imported as Pyramid will import it, so that a
    name that cannot be (a typo, a package not installed) is one line naming it, not Pyramid's
    traceback from inside the Configurator."""
    resolver, problems = DottedNameResolver(), []
    for setting in names:
        for dotted in aslist(settings.get(setting, "")):
            try:
                found = resolver.resolve(dotted)
            except (ImportError, ValueError) as e:
                problems.append(f"{setting}: {dotted!r} cannot be imported ({e})")
                continue
            if setting == "pyramid.includes" and inspect.ismodule(found) and not hasattr(found, "includeme"):
                problems.append(f"{setting}: {dotted!r} has no includeme() (name a module that has one, or module:function)")
    if problems:
        raise SettingsError(problems)
