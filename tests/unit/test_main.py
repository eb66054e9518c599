"""main() and the includeme of each part: what each registers, in the order main() includes them."""

import pytest
from pyramid.config import Configurator
from pyramid.interfaces import ICSRFStoragePolicy, IRequestFactory, IRoutesMapper, ISecurityPolicy, ITweens

from myapp import main, make_app
from myapp.headers import SecurityHeaders
from myapp.models import Database
from myapp.request import Request
from myapp.security import SessionRowCSRFStoragePolicy, SessionSecurityPolicy
from myapp.services import Services
from myapp.services.tokens import DatabaseRefreshLock, RedisRefreshLock
from myapp.settings import load_settings
from tests.conftest import base_settings

PARTS = ["pyramid_jinja2", "myapp.request", "myapp.models", "myapp.services", "myapp.security", "myapp.headers",
         "myapp.tweens", "myapp.routes", "myapp.views"]


@pytest.fixture
def configurator(engine, database_url):
    def make(**overrides):
        settings = base_settings(database_url, **overrides)
        settings["myapp"] = load_settings(settings)
        config = Configurator(settings=settings)
        config.registry[Database] = Database(engine, engine)
        return config

    return make


def test_each_part_registers_what_the_app_relies_on(configurator):
    config = configurator()
    for part in PARTS:
        config.include(part)
    config.commit()
    registry = config.registry
    assert registry.queryUtility(IRequestFactory) is Request
    assert isinstance(registry.queryUtility(ISecurityPolicy), SessionSecurityPolicy)
    assert isinstance(registry.queryUtility(ICSRFStoragePolicy), SessionRowCSRFStoragePolicy)
    services = registry[Services]
    assert services.settings is config.get_settings()["myapp"] and services.database is registry[Database]
    assert isinstance(services.tokens.lock, DatabaseRefreshLock)
    assert services.tokens.providers is services.providers and services.tokens.cipher is services.cipher
    routes = {route.name for route in registry.getUtility(IRoutesMapper).get_routes()}
    assert {"api", "home", "login", "auth_callback", "logout", "backchannel_logout", "auth_user", "readyz"} <= routes
    ordered = [route.name for route in registry.getUtility(IRoutesMapper).get_routes() if not route.name.startswith("__")]
    assert ordered[0] == "api"  # the hot path is matched first
    assert "myapp.tweens.unreadable_request_tween_factory" in [name for name, _ in registry.queryUtility(ITweens).implicit()]
    subscribers = [entry["introspectable"]["subscriber"] for entry in registry.introspector.get_category("subscribers")]
    assert any(isinstance(subscriber, SecurityHeaders) for subscriber in subscribers)


def test_the_redis_lock_backend_is_built_when_chosen(configurator):
    config = configurator(**{"myapp.lock.backend": "redis", "myapp.redis.url": "redis://127.0.0.1:9/0"})
    config.include("myapp.models")
    config.include("myapp.services")
    services = config.registry[Services]
    assert isinstance(services.tokens.lock, RedisRefreshLock) and services.redis is not None
    services.close()


def test_an_ini_key_named_database_is_a_setting_not_the_seam(engine, database_url):
    app = main({}, database="sqlite://", **base_settings(database_url))
    services = app.registry[Services]
    assert isinstance(services.database, Database) and app.registry.settings["database"] == "sqlite://"
    services.close()


def test_make_app_takes_its_database_from_the_caller(engine, database_url):
    database = Database(engine, engine)
    app = make_app(base_settings(database_url), database=database)
    assert app.registry[Services].database is database
    app.registry[Services].providers.close()


def test_main_turns_a_settings_problem_into_one_line(database_url):
    with pytest.raises(SystemExit) as stopped:
        main({}, **base_settings(database_url, **{"myapp.session.idle_timeout": "soon"}))
    assert str(stopped.value).startswith("myapp: myapp.session.idle_timeout:")


@pytest.mark.parametrize(
    "setting, value, line",
    [
        ("pyramid.includes", "no_such_module", "myapp: pyramid.includes: 'no_such_module' cannot be imported (No module named 'no_such_module')"),
        ("pyramid.includes", "myapp.devstack.nosuch", "myapp: pyramid.includes: 'myapp.devstack.nosuch' cannot be imported"),
        ("pyramid.includes", "json:nothing", "myapp: pyramid.includes: 'json:nothing' cannot be imported"),
        ("pyramid.includes", "json", "myapp: pyramid.includes: 'json' has no includeme()"),
        ("pyramid.tweens", "myapp.tweens.nosuch_factory", "myapp: pyramid.tweens: 'myapp.tweens.nosuch_factory' cannot be imported"),
    ],
)
def test_a_dotted_name_that_cannot_be_imported_is_one_line(database_url, setting, value, line):
    with pytest.raises(SystemExit) as stopped:
        main({}, **base_settings(database_url, **{setting: f"pyramid_retry\n{value}" if setting == "pyramid.includes" else value}))
    assert str(stopped.value).startswith(line) and "\n" not in str(stopped.value)
