"""Paths a page asks for on every request (the header's links, the static assets) are remembered
per SCRIPT_NAME (myapp/request.py), and those of routes asked with plain parameters (a post's link)
by them too, apart; whatever else a path depends on is never remembered."""

import re

import pytest

from myapp.request import FIXED_PATHS, FIXED_PATHS_LIMIT, ROUTE_PATHS, ROUTE_PATHS_LIMIT


def links(page) -> set[str]:
    return set(re.findall(r'(?:href|src|action)="([^"#]+)"', page.text))


def test_the_same_page_under_another_mount_point_links_under_it(browser, alice, sign_in):
    sign_in(browser, alice)
    plain = links(browser.get("/posts"))
    mounted = links(browser.get("/posts", extra_environ={"SCRIPT_NAME": "/myapp"}))
    assert "/posts" in plain and "/account/sessions" in plain
    assert {p for p in plain if p.startswith("/")} == {
        p.removeprefix("/myapp") for p in mounted if p.startswith("/")
    }
    assert all(p.startswith("/myapp/") for p in mounted if p.startswith("/")), mounted
    assert links(browser.get("/posts")) == plain, "the first mount point's answers are still its own"


def test_static_assets_keep_their_fingerprint(browser):
    page = browser.get("/")
    assets = [p for p in links(page) if p.startswith("/static/")]
    assert assets and all(re.search(r"\?x=[0-9a-f]+$", p) for p in assets), assets


def test_paths_with_parameters_or_a_query_are_not_remembered(app, browser, alice, bob, sign_in, dbsession):
    from myapp.models import Post

    for n in range(22):  # more than a page: a link to the next one, with a query
        dbsession.add(Post(owner_id=bob.id, title=f"post {n}", body=""))
    dbsession.flush()
    sign_in(browser, alice)
    first = browser.get("/posts")
    assert 'href="/posts?page=2"' in first.text
    second = browser.get("/posts?page=2")
    assert 'href="/posts?page=1"' in second.text
    remembered = app.registry[FIXED_PATHS]
    assert all(len(key) == 3 and key[0] in ("route", "static") or key[0] == "layout" for key in remembered)
    paths = [path for key, value in remembered.items()
             for path in (vars(value).values() if key[0] == "layout" else [value])]
    assert "/posts" in paths and "/account/sessions" in paths
    assert not any("?page" in path or re.search(r"/posts/\d", path) for path in paths)


def test_the_layouts_paths_are_route_path_and_static_paths(app):
    from pyramid.request import Request as PyramidRequest

    from myapp.request import LAYOUT_ASSETS, LAYOUT_ROUTES, Request

    for script_name in ("", "/mounted"):
        ours = Request.blank("/", environ={"SCRIPT_NAME": script_name})
        theirs = PyramidRequest.blank("/", environ={"SCRIPT_NAME": script_name})
        ours.registry = theirs.registry = app.registry
        paths = ours.layout_paths
        assert {name: getattr(paths, name) for name in LAYOUT_ROUTES} == {
            name: theirs.route_path(name) for name in LAYOUT_ROUTES
        }
        assert {name: getattr(paths, name) for name in LAYOUT_ASSETS} == {
            name: theirs.static_path(asset) for name, asset in LAYOUT_ASSETS.items()
        }
        assert ours.layout_paths is paths, "made once per mount point"


def test_the_memo_is_bounded(app, browser):
    for n in range(FIXED_PATHS_LIMIT + 10):
        browser.get("/", extra_environ={"SCRIPT_NAME": f"/m{n}"})
    remembered = app.registry[FIXED_PATHS]
    assert len(remembered) <= FIXED_PATHS_LIMIT
    mounted = [p for p in links(browser.get("/", extra_environ={"SCRIPT_NAME": "/last"})) if p.startswith("/")]
    assert mounted and all(p.startswith("/last/") for p in mounted), mounted


def test_a_relative_asset_name_is_the_callers_package_as_in_pyramid(app):
    from pyramid.request import Request as PyramidRequest

    from myapp.request import Request

    ours, theirs = Request.blank("/"), PyramidRequest.blank("/")
    ours.registry = theirs.registry = app.registry
    assert ours.static_path("myapp:static/app.css") == theirs.static_path("myapp:static/app.css")
    with pytest.raises(ValueError, match="tests.functional:static/app.css"):
        theirs.static_path("static/app.css")  # this test's package has no static view
    with pytest.raises(ValueError, match="tests.functional:static/app.css"):
        ours.static_path("static/app.css")


@pytest.mark.parametrize("query", [
    {"next": "/posts?page=2&x=a b"}, {"next": "/ä/ö?q=%2F#frag"}, {"a": ["1", "2"], "b": ""}, [("z", "1"), ("a", "2")],
    "next=/a b&c", "ä+/?#", {}, "", {"page": 2}, {"page": None}, {"page": 2.5}, {"a": ("1", "2")},
])
@pytest.mark.parametrize("script_name", ["", "/mounted"])
def test_a_remembered_path_with_a_query_is_what_pyramid_writes(app, query, script_name):
    from pyramid.request import Request as PyramidRequest

    from myapp.request import Request

    ours = Request.blank("/", environ={"SCRIPT_NAME": script_name}) if script_name else Request.blank("/")
    theirs = PyramidRequest.blank("/", environ={"SCRIPT_NAME": script_name}) if script_name else PyramidRequest.blank("/")
    ours.registry = theirs.registry = app.registry
    for _ in range(2):  # asked first, then from what was remembered
        assert ours.route_path("signed_out", _query=query) == theirs.route_path("signed_out", _query=query)
    assert ours.route_path("posts") == theirs.route_path("posts")


def test_a_remembered_query_is_remembered_by_its_types_too(app):
    """``1``, ``True`` and ``1.0`` are equal as keys and written differently: each is written as
    Pyramid writes it, whichever came first."""
    from myapp.request import Request

    request = Request.blank("/")
    request.registry = app.registry
    for first in range(3):
        values = [1, True, 1.0]
        values = values[first:] + values[:first]
        written = {int: "/posts?page=1", bool: "/posts?page=True", float: "/posts?page=1.0"}
        assert [request.route_path("posts", _query={"page": value}) for value in values] == [
            written[type(value)] for value in values
        ]
        assert request.route_path("posts", _query={1: "a"}) == "/posts?1=a"  # a name that is no string
        assert request.route_path("posts", _query={True: "a"}) == "/posts?True=a"


def test_queries_equal_as_keys_are_each_written_as_pyramid_writes_them(app):
    """Mappings equal as dicts (another order), or whose pairs are equal as keys (an enum, a bool,
    a digit's text, a multidict's repeated names), asked one after another: each as Pyramid
    writes it, whichever was remembered first."""
    from enum import IntEnum, StrEnum

    from pyramid.request import Request as PyramidRequest
    from webob.multidict import MultiDict

    from myapp.request import Request

    class Name(StrEnum):
        PAGE = "page"

    class Number(IntEnum):
        ONE = 1

    ours, theirs = Request.blank("/"), PyramidRequest.blank("/")
    ours.registry = theirs.registry = app.registry
    queries = [
        {"a": "1", "b": "2"}, {"b": "2", "a": "1"}, {"page": 1}, {"page": "1"}, {"page": Number.ONE},
        {Name.PAGE: 1}, {"page": False}, {"page": 0}, MultiDict([("a", "1"), ("a", "2")]),
        MultiDict([("a", "2"), ("a", "1")]), {"a": "2"}, "page=1", {"page=1": ""}, {"page": -1}, {"page": 10**30},
    ]
    for query in queries * 2:
        assert ours.route_path("posts", _query=query) == theirs.route_path("posts", _query=query), query


def test_remembered_queries_are_bounded(app):
    from myapp import request as module

    request = module.Request.blank("/")
    request.registry = app.registry
    for n in range(module._QUERIES_LIMIT + 10):
        assert request.route_path("signed_out", _query={"next": f"/posts?page={n}"}) == (
            f"/signed-out?next=%2Fposts%3Fpage%3D{n}"
        )
    assert 0 < len(module._QUERIES) <= module._QUERIES_LIMIT
    assert request.route_path("signed_out", _query={"next": "/"}) == "/signed-out?next=%2F"


def test_a_query_with_parameters_or_an_anchor_is_pyramids_own(app):
    from pyramid.request import Request as PyramidRequest

    from myapp.request import Request

    ours, theirs = Request.blank("/"), PyramidRequest.blank("/")
    ours.registry = theirs.registry = app.registry
    assert ours.route_path("post", id=7, _query={"a": "1"}) == theirs.route_path("post", id=7, _query={"a": "1"})
    assert ours.route_path("posts", _query={"a": "1"}, _anchor="x") == "/posts?a=1#x"
    with pytest.raises(KeyError):
        ours.route_path("no_such_route", _query={"a": "1"})


def test_a_query_with_elements_is_pyramids_own(app):
    """Elements and a query: the query is kept (it was dropped, the path alone returned)."""
    from pyramid.request import Request as PyramidRequest

    from myapp.request import Request

    ours, theirs = Request.blank("/"), PyramidRequest.blank("/")
    ours.registry = theirs.registry = app.registry
    for _ in range(2):  # before and after the route's path is remembered
        assert ours.route_path("posts", "new", _query={"a": "1"}) == theirs.route_path("posts", "new", _query={"a": "1"})
    assert ours.route_path("posts", "new", _query={"a": "1"}) == "/posts/new?a=1"


def test_a_route_asked_with_parameters_is_what_pyramid_writes_and_remembered_apart(app, browser, alice, bob, sign_in,
                                                                                 dbsession):
    from pyramid.request import Request as PyramidRequest

    from myapp.models import Post
    from myapp.request import Request

    for script_name in ("", "/mounted"):
        ours = Request.blank("/", environ={"SCRIPT_NAME": script_name})
        theirs = PyramidRequest.blank("/", environ={"SCRIPT_NAME": script_name})
        ours.registry = theirs.registry = app.registry
        for _ in range(2):  # asked first, then from what was remembered
            for kw in ({"id": 7}, {"id": "7"}, {"id": "a b/ä"}, {"id": True}, {"id": 7.0}, {"id": 7, "_query": {"x": "1"}},
                       {"upstream": "demo", "subpath": ("a", "b c")}, {"upstream": "demo", "subpath": ()},
                       {"upstream": "demo", "subpath": ("a", 1)}, {"upstream": "demo", "subpath": ["a"]},
                       {"id": 7, "_anchor": "top"}):
                route = "api" if "upstream" in kw else "post"
                assert ours.route_path(route, **kw) == theirs.route_path(route, **kw), kw
    remembered = app.registry[ROUTE_PATHS]
    assert {"/posts/7", "/posts/a%20b/%C3%A4", "/mounted/posts/7", "/mounted/posts/a%20b/%C3%A4", "/api/demoa/b%20c",
            "/api/demo", "/mounted/api/demo"} <= set(remembered.values())
    assert not any("True" in path or "7.0" in path for path in remembered.values())
    assert not {"/api/demoa/1", "/api/demoa"} & set(remembered.values()), "a number or a list in a subpath"
    post = Post(owner_id=bob.id, title="linked", body="")
    dbsession.add(post)
    dbsession.flush()
    sign_in(browser, alice)
    assert f'href="/posts/{post.id}"' in browser.get("/posts").text


def test_remembered_route_paths_are_bounded(app):
    from myapp.request import Request

    request = Request.blank("/")
    request.registry = app.registry
    for n in range(ROUTE_PATHS_LIMIT + 10):
        assert request.route_path("post", id=n + 1) == f"/posts/{n + 1}"
    assert 0 < len(app.registry[ROUTE_PATHS]) <= ROUTE_PATHS_LIMIT
    assert request.route_path("post", id=1) == "/posts/1"


def test_a_route_with_a_pregenerator_is_pyramids_own_and_not_remembered():
    from pyramid.config import Configurator
    from pyramid.request import Request as PyramidRequest

    from myapp.request import Request

    config = Configurator()
    config.add_route("tagged", "/tagged", pregenerator=lambda request, elements, kw: (elements, {**kw, "_query": {"t": "x"}}))
    config.add_route("tag", "/tag/{name}", pregenerator=lambda request, elements, kw: (elements, {**kw, "name": "x"}))
    config.commit()
    config.registry[FIXED_PATHS] = {}
    config.registry[ROUTE_PATHS] = {}
    ours, theirs = Request.blank("/"), PyramidRequest.blank("/")
    ours.registry = theirs.registry = config.registry
    for _ in range(2):
        assert ours.route_path("tagged") == theirs.route_path("tagged") == "/tagged?t=x"
        assert ours.route_path("tagged", _query={"a": "1"}) == theirs.route_path("tagged", _query={"a": "1"})
        assert ours.route_path("tag", name="y") == theirs.route_path("tag", name="y") == "/tag/x"
    assert config.registry[FIXED_PATHS] == {} and config.registry[ROUTE_PATHS] == {}


def test_a_route_asked_with_values_of_other_kinds_or_pyramids_options_is_what_pyramid_writes(app):
    """Subclasses of str and int (Markup), bytes, None, empty values, Pyramid's own options and a
    mount point that is not ASCII: each written as Pyramid writes it, before and after anything is
    remembered, and only exact strings and whole numbers remembered."""
    from markupsafe import Markup
    from pyramid.request import Request as PyramidRequest

    from myapp.request import Request

    class Text(str):
        pass

    class Number(int):
        pass

    asked = [{"id": value} for value in (Text("7"), Markup("<b>"), Number(7), b"7", None, "", 0, -1, False)]
    asked += [{"id": 7, option: value} for option, value in (
        ("_scheme", "https"), ("_host", "example.test"), ("_port", 8443), ("_app_url", "http://other.test/x"),
        ("_anchor", ""), ("_query", ""), ("_query", {}),
    )]
    for script_name in ("", "/m%20x", "/ä".encode().decode("latin-1")):
        ours = Request.blank("/", environ={"SCRIPT_NAME": script_name})
        theirs = PyramidRequest.blank("/", environ={"SCRIPT_NAME": script_name})
        ours.registry = theirs.registry = app.registry
        for _ in range(2):
            for kw in asked:
                assert ours.route_path("post", **kw) == theirs.route_path("post", **kw), (script_name, kw)
            assert ours.route_path("post", "edit", id=7) == theirs.route_path("post", "edit", id=7)
            with pytest.raises(KeyError):
                ours.route_path("no_such_route", id=7)
    kinds = {type(value) for key in app.registry[ROUTE_PATHS] for _, value in key[2]}
    assert kinds <= {str, int}, "a subclass, bytes or None is Pyramid's own, not remembered"
