"""myapp: a backend-for-frontend that keeps OpenID Connect tokens on the server."""

from pyramid.config import Configurator

from myapp.models import SchemaError
from myapp.resources import Permission, Root
from myapp.settings import SettingsError, load_settings


def main(global_config, **settings):
    """The WSGI application (``paste.app_factory``): parse settings, include each part, scan."""
    try:
        settings["myapp"] = load_settings(settings)
        settings.setdefault("myapp.config_file", (global_config or {}).get("__file__"))
        with Configurator(settings=settings, root_factory=Root) as config:
            config.set_default_permission(Permission.UNDECLARED)
            config.include("pyramid_jinja2")
            config.include(".models")
            config.include(".services")
            config.include(".security")
            config.include(".tweens")
            config.include(".routes")
            config.include(".views")
            config.scan(".views")
    except (SettingsError, SchemaError) as e:
        raise SystemExit(f"myapp: {e}") from None
    return config.make_wsgi_app()
