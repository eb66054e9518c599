"""The ACL matrix on every post route: owner, other user, admin, anonymous."""

import pytest
from sqlalchemy import delete, select

from myapp.models import AuditEvent, Post


@pytest.fixture
def post(dbsession, alice):
    post = Post(owner_id=alice.id, title="Alice's post", body="Hello from Alice")
    dbsession.add(post)
    dbsession.flush()
    return post


@pytest.fixture
def as_user(browser, sign_in, alice, bob, admin):
    """A browser signed in as the given role: owner (alice), other (bob), admin, or anonymous."""

    def as_user(role):
        user = {"owner": alice, "other": bob, "admin": admin, "anonymous": None}[role]
        if user is not None:
            sign_in(browser, user)
        return browser

    return as_user


def reload(dbsession, post):
    post_id = post.id
    dbsession.expire_all()
    return dbsession.get(Post, post_id)


@pytest.mark.parametrize("role", ["owner", "other", "admin"])
def test_list_and_show_for_signed_in_users(as_user, post, role):
    browser = as_user(role)
    assert "Alice&#39;s post" in browser.get("/posts").text
    page = browser.get(f"/posts/{post.id}")
    assert "Hello from Alice" in page.text
    offers_changes = f"/posts/{post.id}/edit" in page.text
    assert offers_changes is (role in ("owner", "admin"))
    assert (f"/posts/{post.id}/delete" in page.text) is (role in ("owner", "admin"))


@pytest.mark.parametrize("url", ["/posts", "/posts/new", "/posts/{id}", "/posts/{id}/edit"])
def test_anonymous_get_is_sent_to_login(as_user, post, url):
    url = url.format(id=post.id)
    response = as_user("anonymous").get(url, status=303)
    assert response.location.endswith("/login?next=" + url.replace("/", "%2F"))


@pytest.mark.parametrize("url", ["/posts/999999", "/posts/999999/edit", "/posts/abc", "/posts/0"])
def test_a_stranger_cannot_tell_which_posts_exist(as_user, post, url):
    """A post that does not exist is sent to sign in like one that does, not answered 404."""
    response = as_user("anonymous").get(url, status=303)
    assert response.location.endswith("/login?next=" + url.replace("/", "%2F"))
    assert "/login" in as_user("anonymous").submit(url.replace("/edit", "") + "/delete", status=303).location


@pytest.mark.parametrize(
    "method, url",
    [("DELETE", "/posts/{id}"), ("POST", "/posts/{id}"), ("PUT", "/posts/{id}/edit"), ("PUT", "/posts/{id}/delete"),
     ("GET", "/posts/{id}/delete"), ("GET", "/admin/users/{user}/sessions/revoke")],
)
def test_a_method_a_row_does_not_take_tells_a_stranger_nothing(as_user, post, alice, method, url):
    """A stranger got 405 where the row exists and the sign-in where it does not, whichever method
    the route does not take: anyone could count posts and accounts (helper-113)."""
    browser = as_user("anonymous")
    answers = []
    for row, user in ((post.id, alice.id), (999999, 999999)):
        response = getattr(browser, method.lower())(url.format(id=row, user=user), expect_errors=True)
        answers.append((response.status_int, response.headers.get("Location", "").partition("?")[0]))
    assert answers[0] == answers[1] and answers[0][0] == 303 and answers[0][1].endswith("/login")
    # Someone signed in is told the method is not taken, as before.
    signed_in = as_user("other")
    assert getattr(signed_in, method.lower())(url.format(id=post.id, user=alice.id), expect_errors=True).status_int == 405


@pytest.mark.parametrize("url", ["/posts", "/posts/{id}/edit", "/posts/{id}/delete"])
def test_anonymous_post_is_refused(as_user, post, dbsession, url):
    response = as_user("anonymous").submit(url.format(id=post.id), {"title": "x"}, status=303)
    assert "/login" in response.location
    assert reload(dbsession, post).title == "Alice's post"
    assert dbsession.scalar(select(Post).where(Post.title == "x")) is None


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_edit_allowed(as_user, post, dbsession, role):
    browser = as_user(role)
    form = browser.get(f"/posts/{post.id}/edit")
    assert 'value="Alice&#39;s post"' in form.text
    response = browser.submit(f"/posts/{post.id}/edit", {"title": "Edited", "body": "New body"}, status=303)
    assert response.location.endswith(f"/posts/{post.id}?notice=post_updated")
    assert "Your changes were saved." in response.follow().text
    assert reload(dbsession, post).title == "Edited"


def test_edit_by_other_user_is_forbidden_and_audited(as_user, post, dbsession, bob):
    browser = as_user("other")
    browser.get(f"/posts/{post.id}/edit", status=403)
    page = browser.submit(f"/posts/{post.id}/edit", {"title": "Hijacked", "body": ""}, status=403)
    assert "You cannot do that" in page.text
    assert reload(dbsession, post).title == "Alice's post"
    denials = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "access_denied")).all()
    assert [(d.user_id, d.actor_id) for d in denials] == [(bob.id, bob.id), (bob.id, bob.id)]  # actor: helper-42
    assert f"POST /posts/{post.id}/edit (needs edit)" in denials[-1].detail


@pytest.mark.parametrize("role, status, deleted", [("owner", 303, True), ("admin", 303, True), ("other", 403, False)])
def test_delete(as_user, post, dbsession, role, status, deleted):
    as_user(role).submit(f"/posts/{post.id}/delete", status=status)
    assert (reload(dbsession, post) is None) is deleted


def test_a_delete_sent_again_finds_nothing_though_a_post_was_written_since(as_user, post, dbsession, bob):
    """SQLite gave a deleted highest id to the next post: a delete form sent again (a double click,
    Back and resubmit) deleted that other person's post (helper-135). No id is given twice."""
    admin = as_user("admin")
    admin.submit(f"/posts/{post.id}/delete", status=303)
    newer = Post(owner_id=bob.id, title="Bob's post", body="")
    dbsession.add(newer)
    dbsession.flush()
    assert newer.id > post.id
    admin.submit(f"/posts/{post.id}/delete", status=404)
    assert reload(dbsession, newer) is not None


@pytest.mark.parametrize("role", ["owner", "other", "admin"])
def test_create(as_user, dbsession, role):
    browser = as_user(role)
    assert 'name="title"' in browser.get("/posts/new").text
    response = browser.submit("/posts", {"title": f"By {role}", "body": "Text"}, status=303)
    created = dbsession.scalars(select(Post).where(Post.title == f"By {role}")).one()
    assert response.location.endswith(f"/posts/{created.id}?notice=post_created")


@pytest.mark.parametrize(
    "form, message",
    [
        ({"title": "", "body": "x"}, "Give your post a title."),
        ({"title": "   ", "body": "x"}, "Give your post a title."),
        ({"title": "\u200b", "body": "x"}, "The title shows nothing"),
        ({"title": "\u3000\ufeff\u2060\u00a0", "body": "x"}, "The title shows nothing"),
        ({"title": "\u3164\u2800", "body": "x"}, "The title shows nothing"),
        ({"title": "\u202e\u0301", "body": "x"}, "The title shows nothing"),
        ({"title": "t" * 201, "body": "x"}, "Keep the title to 200 characters or fewer."),
        ({"title": "ok", "body": "b" * 20001}, "Keep the text to 20000 characters or fewer."),
        ({"title": "nul\x00", "body": ""}, "cannot be saved"),
        ({"title": "bell\x07", "body": ""}, "cannot be saved"),
        ({"title": "two\r\nlines", "body": ""}, "cannot be saved"),
        ({"title": "tab\there", "body": ""}, "cannot be saved"),
        ({"title": "c1\x85mid", "body": ""}, "cannot be saved"),
        ({"title": "ok", "body": "escape \x1b[31m red"}, "cannot be saved"),
        ({"title": "ok", "body": "a lone\rreturn"}, "cannot be saved"),
        ({"title": "ok", "body": "del\x7f"}, "cannot be saved"),
    ],
)
def test_bad_input_gets_a_clear_error_and_keeps_the_text(as_user, dbsession, form, message):
    page = as_user("owner").submit("/posts", form, status=400)
    assert message in page.text
    if form["body"] and len(form["body"]) < 100:
        assert form["body"] in page.text
    assert dbsession.scalar(select(Post)) is None


@pytest.mark.parametrize("title", ["\u200bHi", "\u00e9t\u00e9", "\u4e2d\u6587", "\U0001f600", "a\u0301"])
def test_a_title_that_shows_something_is_kept_as_written(as_user, dbsession, title):
    as_user("owner").submit("/posts", {"title": title, "body": ""}, status=303)
    assert dbsession.scalars(select(Post.title)).one() == title


def test_an_invisible_title_is_refused_on_edit_too(as_user, dbsession):
    alice = as_user("owner")
    alice.submit("/posts", {"title": "Seen", "body": ""}, status=303)
    post = dbsession.scalars(select(Post)).one()
    page = alice.submit(f"/posts/{post.id}/edit", {"title": "\u200b\u200c", "body": "kept"}, status=400)
    assert "The title shows nothing" in page.text and "kept" in page.text
    assert reload(dbsession, post).title == "Seen"


def test_an_edit_form_older_than_the_post_saves_nothing_and_keeps_the_text(as_user, dbsession):
    """helper-142: the owner's edit tab, opened before a moderator removed the text, saved over
    the removal with no word. Now it is refused (409) with the person's text kept, and saving it
    again, having been told, replaces the post."""
    alice = as_user("owner")
    alice.submit("/posts", {"title": "Mine", "body": "private"}, status=303)
    post = dbsession.scalars(select(Post)).one()
    version = alice.get(f"/posts/{post.id}/edit").html.select_one("input[name=version]")["value"]
    as_user("admin").submit(f"/posts/{post.id}/edit", {"title": "Mine", "body": "[removed by moderator]"}, status=303)
    alice = as_user("owner")  # back to the owner's tab, opened before
    page = alice.submit(f"/posts/{post.id}/edit", {"title": "Mine, fixed", "body": "private", "version": version},
                        status=409)
    assert "This post was changed after you opened it" in page.text and "Mine, fixed" in page.text
    assert reload(dbsession, post).body == "[removed by moderator]"
    again = page.html.select_one("input[name=version]")["value"]
    assert again != version
    alice.submit(f"/posts/{post.id}/edit", {"title": "Mine, fixed", "body": "private", "version": again}, status=303)
    assert (reload(dbsession, post).title, reload(dbsession, post).body) == ("Mine, fixed", "private")


def test_an_edit_saved_as_the_post_is_deleted_is_a_404(as_user, dbsession, monkeypatch):
    """helper-145: the conditional update found no row, and reading the post again was a 500."""
    import myapp.views.posts as views

    alice = as_user("owner")
    alice.submit("/posts", {"title": "Mine", "body": "x"}, status=303)
    post = dbsession.scalars(select(Post)).one()
    version = alice.get(f"/posts/{post.id}/edit").html.select_one("input[name=version]")["value"]
    real_update = views.update

    def deleted_meanwhile(model):
        dbsession.execute(delete(Post.__table__).where(Post.__table__.c.id == post.id))
        return real_update(model)

    monkeypatch.setattr(views, "update", deleted_meanwhile)
    alice.submit(f"/posts/{post.id}/edit", {"title": "T", "body": "b", "version": version}, status=404)


def test_a_new_post_form_sent_again_with_other_words_says_they_were_not_published(as_user, dbsession):
    """helper-142: sent again (Back, changed, Publish) it landed on the first post saying "Your
    post was published", the new words nowhere."""
    alice = as_user("owner")
    token = alice.get("/posts/new").html.select_one("input[name=form_token]")["value"]
    alice.submit("/posts", {"title": "First", "body": "one", "form_token": token}, status=303)
    same = alice.submit("/posts", {"title": "First", "body": "one", "form_token": token}, status=303)
    assert same.location.endswith("notice=post_created")
    changed = alice.submit("/posts", {"title": "Second", "body": "two", "form_token": token}, status=303)
    assert changed.location.endswith("notice=post_sent_before")
    flash = alice.get(changed.location).html.select_one("[data-testid=flash]")
    assert "What you changed afterwards was not saved" in flash.text and "flash-info" in flash["class"]
    assert dbsession.scalars(select(Post.title)).all() == ["First"]


def test_a_text_keeps_its_lines_and_tabs(as_user, dbsession):
    as_user("owner").submit("/posts", {"title": "Lines", "body": "one\r\n\ttwo\r\nthree"}, status=303)
    assert dbsession.scalars(select(Post.body)).one() == "one\n\ttwo\nthree"


def test_missing_post_is_404(as_user):
    browser = as_user("owner")
    browser.get("/posts/999999", status=404)
    browser.submit("/posts/999999/edit", {"title": "x"}, status=404)
    browser.submit("/posts/999999/delete", status=404)


@pytest.mark.parametrize("role", ["owner", "admin", "other"])
def test_deleting_a_post_that_is_not_there_is_404_in_plain_words(as_user, post, dbsession, role):
    """A second "Delete post" after Stop (the first had reached the server) met "Page not found".
    Still 404 (SPEC.md: a missing row), but the page says there is no post, that it may already
    have been deleted, and links to the posts; the same for an id that never had a post, and
    nothing is recorded."""
    as_user("owner").submit(f"/posts/{post.id}/delete", status=303)
    browser = as_user(role)
    deleted = browser.submit(f"/posts/{post.id}/delete", status=404)
    assert "It may already have been deleted." in deleted.text
    assert deleted.html.find("a", href="/posts") is not None
    never = browser.submit("/posts/999999/delete", status=404)
    assert never.text.replace("999999", str(post.id)) == deleted.text.replace("999999", str(post.id))
    assert dbsession.scalars(select(AuditEvent)).all() == [], "deleting nothing is no event"


def test_someone_elses_post_is_still_refused(as_user, post, dbsession):
    """Another person's post that is there is refused (403, audited), not the missing post's 404."""
    browser = as_user("other")
    browser.submit(f"/posts/{post.id}/delete", status=403)
    assert reload(dbsession, post) is not None
    denials = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "access_denied")).all()
    assert [d.detail for d in denials] == [f"POST /posts/{post.id}/delete (needs delete)"]


@pytest.mark.parametrize("sent", ["a stale token", "no token", "another origin"])
def test_deleting_a_post_that_is_not_there_with_a_bad_form_is_404(as_user, post, alice, sent):
    """A forged or stale form learns nothing new: the 404 of any missing row, as before."""
    browser = as_user("owner")
    browser.submit(f"/posts/{post.id}/delete", status=303)
    data = {"a stale token": {"csrf_token": "stale"}, "no token": {}}.get(sent, {"csrf_token": browser.csrf_token})
    headers = {"Origin": "https://evil.example"} if sent == "another origin" else {}
    browser.submit(f"/posts/{post.id}/delete", data, csrf=False, headers=headers, status=404)


@pytest.mark.parametrize(
    "post_id",
    [
        "abc", "-1", "0", "1.5", "99999999999999999999999", "%00", "1%20OR%201=1", "%D9%A3", "0x10",
        "2147483648", "99999999999999999999", "9" * 18,
    ],
)
def test_malformed_ids_are_404_never_500(as_user, post_id):
    browser = as_user("owner")
    browser.get(f"/posts/{post_id}", status=404)
    browser.get(f"/posts/{post_id}/edit", status=404)
    browser.submit(f"/posts/{post_id}/edit", {"title": "x"}, status=404)
    browser.submit(f"/posts/{post_id}/delete", status=404)


def test_pagination(as_user, dbsession, alice):
    dbsession.add_all(Post(owner_id=alice.id, title=f"Post {i:02d}", body="") for i in range(25))
    dbsession.flush()
    browser = as_user("owner")
    first = browser.get("/posts")
    assert first.text.count('class="card post-item"') == 20
    assert "page=2" in first.text
    second = browser.get("/posts?page=2")
    assert second.text.count('class="card post-item"') == 5
    for bad in ["0", "-1", "x", "9" * 30]:
        assert browser.get(f"/posts?page={bad}").status_int == 200


def test_empty_state(as_user):
    assert "No posts yet" in as_user("owner").get("/posts").text


def test_post_body_is_escaped(as_user, dbsession, alice):
    post = Post(owner_id=alice.id, title="<script>alert(1)</script>", body="<img src=x onerror=alert(1)>")
    dbsession.add(post)
    dbsession.flush()
    page = as_user("other").get(f"/posts/{post.id}")
    assert "<script>alert(1)</script>" not in page.text
    assert "<img src=x" not in page.text


# -- issue 10: a double Publish makes one post; a session that ends mid-edit loses nothing --

def form_token_of(page) -> str:
    return page.html.select_one("input[name=form_token]")["value"]


def test_a_second_submit_of_the_same_form_lands_on_the_first_post(as_user, dbsession):
    browser = as_user("owner")
    token = form_token_of(browser.get("/posts/new"))
    first = browser.submit("/posts", {"title": "Once", "body": "Text", "form_token": token}, status=303)
    second = browser.submit("/posts", {"title": "Once", "body": "Text", "form_token": token}, status=303)
    assert first.location == second.location
    assert len(dbsession.scalars(select(Post).where(Post.title == "Once")).all()) == 1


def test_each_new_form_gets_its_own_token(as_user, dbsession):
    browser = as_user("owner")
    for title in ("One", "Two"):
        browser.submit("/posts", {"title": title, "form_token": form_token_of(browser.get("/posts/new"))}, status=303)
    assert len(dbsession.scalars(select(Post)).all()) == 2


def test_someone_elses_form_token_makes_a_post_of_ones_own(as_user, browser, sign_in, dbsession, alice, bob):
    sign_in(browser, alice)
    token = form_token_of(browser.get("/posts/new"))
    alice_post = browser.submit("/posts", {"title": "Alice's", "form_token": token}, status=303)
    sign_in(browser, bob)
    bobs = browser.submit("/posts", {"title": "Bob's", "form_token": token}, status=303)
    assert bobs.location != alice_post.location
    post = dbsession.scalars(select(Post).where(Post.title == "Bob's")).one()
    assert post.owner_id == bob.id and post.form_token is None


@pytest.mark.parametrize("token", ["short", "x" * 43 + "!", "a" * 44, ""])
def test_a_malformed_form_token_is_a_form_error(as_user, dbsession, token):
    page = as_user("owner").submit("/posts", {"title": "T", "body": "kept text", "form_token": token}, status=400)
    assert "This form could not be read" in page.text and "kept text" in page.text
    assert len(form_token_of(page)) == 43
    assert dbsession.scalar(select(Post)) is None


def test_a_refused_form_keeps_its_token(as_user, dbsession):
    browser = as_user("owner")
    token = form_token_of(browser.get("/posts/new"))
    page = browser.submit("/posts", {"title": "", "body": "x", "form_token": token}, status=400)
    assert form_token_of(page) == token


def test_a_form_without_a_token_still_publishes(as_user, dbsession):
    as_user("owner").submit("/posts", {"title": "Old form"}, status=303)
    assert dbsession.scalars(select(Post.form_token).where(Post.title == "Old form")).one() is None


def test_the_form_is_marked_for_the_scripts(as_user):
    form = as_user("owner").get("/posts/new").html.select_one("form.form")
    assert form.has_attr("data-submit-once") and form["data-draft"] == "new-post"
    assert form.select_one("#title")["maxlength"] == "200"


def test_publishing_with_an_ended_session_comes_back_to_the_form(browser, sign_in, alice, session_store, dbsession):
    from myapp.services.sessions import EndReason

    _, row = sign_in(browser, alice)
    token = form_token_of(browser.get("/posts/new"))
    session_store.end(row, EndReason.REVOKED)
    dbsession.flush()
    response = browser.submit(
        "/posts", {"title": "Draft", "form_token": token}, headers={"Referer": "https://app.example.test/posts/new"}, status=303
    )
    assert "next=%2Fposts%2Fnew" in response.location
    assert dbsession.scalar(select(Post)) is None
