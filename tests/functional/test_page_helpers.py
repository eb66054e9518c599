"""The display helpers every template has as ``ui`` (myapp/views/__init__.py)."""

from datetime import date, datetime, timedelta, timezone

import pytest
from jinja2 import Environment
from markupsafe import Markup

from myapp.views import when

# ui.when as it was, a macro of _macros.jinja2: the function writes what it wrote.
MACRO = """{%- macro when(moment, seconds=False) -%}
<time datetime="{{ moment.strftime('%Y-%m-%dT%H:%M:%SZ') }}"{% if seconds %} data-seconds{% endif %}>{{ moment.strftime('%Y-%m-%d %H:%M:%S' if seconds else '%Y-%m-%d %H:%M') }} UTC</time>
{%- endmacro -%}"""

MOMENTS = [
    datetime(2026, 12, 6, 23, 5, 9, 123456, tzinfo=timezone.utc),
    datetime(2026, 1, 1, tzinfo=timezone.utc),
    datetime(999, 3, 4, 5, 6, 7, tzinfo=timezone.utc),
    datetime(2026, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))),  # written as it is, not moved to UTC
    datetime(2026, 6, 1, 12, 0),
    date(2026, 6, 1),  # a date: its time written as midnight, as the macro wrote it
]


@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("seconds", [False, True, None, 0, 1, "yes"])
def test_when_writes_what_the_macro_wrote(moment, seconds):
    macro = Environment(autoescape=True).from_string(MACRO).module.when
    written = when(moment, seconds=seconds)
    assert isinstance(written, Markup)
    assert written == macro(moment, seconds=seconds)
    assert when(moment, seconds) == written


def test_when_in_a_page(app, browser, alice, sign_in):
    sign_in(browser, alice)
    page = browser.get("/").text
    assert '<time datetime="' in page and " UTC</time> at the latest" in page, "the dashboard's session end"
    assert "&lt;time" not in page, "not escaped again by the template"


def test_every_macro_of_the_file_is_still_a_helper(app):
    from pyramid_jinja2 import IJinja2Environment

    ui = app.registry.queryUtility(IJinja2Environment, name=".jinja2").globals["ui"]
    assert ui.when is when
    assert ui.device_name("Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0") == "Chrome on Linux"
