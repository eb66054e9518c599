"""Each template compiled once in a process, for every app it makes (myapp/views/__init__.py)."""

import jinja2
import pytest
from pyramid_jinja2 import IJinja2Environment

from myapp.views import CompiledInThisProcess, compiled_templates
from tests.conftest import TEST_ISSUER
from tests.functional.conftest import Browser

PAGES = ["/", "/posts", "/posts/new", "/account/sessions"]
# The provider the users of make_user sign in with (the fake provider's would end their sessions).
USERS_PROVIDER = {"myapp.oidc.issuer": TEST_ISSUER}


class Alike:
    """A setting's value given in code, written as every other one is."""

    def __repr__(self):
        return "alike"


@pytest.fixture
def compiled(monkeypatch):
    """The names of the templates Jinja compiles from here on, in order."""
    names = []
    compile_source = jinja2.Environment.compile

    def compile_counted(self, source, name=None, filename=None, raw=False, defer_init=False):
        names.append(name)
        return compile_source(self, source, name, filename, raw, defer_init)

    monkeypatch.setattr(jinja2.Environment, "compile", compile_counted)
    return names


def pages_of(app, sign_in, user) -> list[str]:
    browser = Browser(app)
    anonymous = browser.get("/").text
    sign_in(browser, user)
    return [anonymous] + [browser.get(path).text for path in PAGES]


def test_a_second_app_renders_every_page_without_compiling_a_template(make_app, sign_in, alice, compiled):
    pages_of(make_app(**USERS_PROVIDER), sign_in, alice)
    compiled.clear()
    pages = pages_of(make_app(**USERS_PROVIDER), sign_in, alice)
    assert compiled == []
    assert all("</main>" in page for page in pages), [page[-200:] for page in pages]
    assert "Sign in" in pages[0] and all("Alice" in page for page in pages[1:])


def test_an_edited_template_is_compiled_again_and_its_old_code_never_used(compiled):
    cache = CompiledInThisProcess()

    def rendered(source: str) -> str:
        environment = jinja2.Environment(loader=jinja2.DictLoader({"page": source}), bytecode_cache=cache, autoescape=True)
        return environment.get_template("page").render(name="<b>")

    assert [rendered("Hi {{ name }}"), rendered("Hi {{ name }}")] == ["Hi &lt;b&gt;"] * 2
    assert compiled == ["page"]
    assert [rendered("Bye {{ name }}!"), rendered("Bye {{ name }}!")] == ["Bye &lt;b&gt;!"] * 2
    assert compiled == ["page", "page"]
    assert rendered("Hi {{ name }}") == "Hi &lt;b&gt;", "back as it was: compiled again, not the edit's code"
    assert compiled == ["page", "page", "page"]
    assert len(cache.compiled) == 1, "one entry for each template, however often it is edited"


def test_apps_with_other_jinja2_settings_never_share_compiled_code():
    assert compiled_templates({"sqlalchemy.url": "sqlite://"}) is compiled_templates({"myapp.public_url": "x"})
    plain = compiled_templates({})
    trimmed = compiled_templates({"jinja2.trim_blocks": "true"})
    assert trimmed is not plain
    assert compiled_templates({"jinja2.trim_blocks": "true", "other": "1"}) is trimmed
    assert compiled_templates({"jinja2.trim_blocks": "false"}) not in (plain, trimmed)
    # Values given in code: each its own key (two objects alike in str() are not the same setting).
    first, second = Alike(), Alike()
    assert str(first) == str(second) and repr(first) == repr(second)
    assert compiled_templates({"jinja2.finalize": first}) is not compiled_templates({"jinja2.finalize": second})
    assert compiled_templates({"jinja2.finalize": first}) is compiled_templates({"jinja2.finalize": first})
    assert compiled_templates({"jinja2.extensions": ["jinja2.ext.do"]}) is None, "unhashable: no shared cache"


def test_a_page_compiled_without_autoescaping_never_serves_an_app_that_escapes(make_app, sign_in, make_user):
    """Jinja compiles escaping into a template's code: an app configured without it (a test, an
    embedding host) must not hand that code to one that escapes."""
    bold = make_user("mallory", name="<b>Mallory</b>")
    unescaped = pages_of(make_app(**USERS_PROVIDER, **{"jinja2.autoescape": "false"}), sign_in, bold)[1]
    assert "Welcome, <span data-testid=\"dashboard-user\"><b>Mallory</b></span>" in unescaped
    escaped = pages_of(make_app(**USERS_PROVIDER), sign_in, bold)[1]
    assert "&lt;b&gt;Mallory&lt;/b&gt;" in escaped and "<b>Mallory</b>" not in escaped


def test_a_bytecode_cache_the_ini_names_is_the_one_used(make_app, tmp_path):
    app = make_app(**{"jinja2.bytecode_caching": "true", "jinja2.bytecode_caching_directory": str(tmp_path)})
    environment = app.registry.queryUtility(IJinja2Environment, name=".jinja2")
    assert isinstance(environment.bytecode_cache, jinja2.FileSystemBytecodeCache)
    assert Browser(app).get("/").status_code == 200
    assert list(tmp_path.iterdir()), "the ini's cache holds what was compiled"
