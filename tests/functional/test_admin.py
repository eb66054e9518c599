import pytest
from sqlalchemy import select

from myapp.models import AuditEvent
from myapp.services.audit import AuditEventType, AuditLog


@pytest.mark.parametrize("url", ["/admin/audit", "/admin/users"])
def test_admin_pages_are_for_admins_only(browser, sign_in, alice, admin, url):
    browser.get(url, status=303)
    sign_in(browser, alice)
    browser.get(url, status=403)
    sign_in(browser, admin)
    browser.get(url, status=200)


def test_audit_log_lists_events_newest_first_with_filter(browser, sign_in, admin, alice, dbsession):
    log = AuditLog(dbsession=dbsession)
    log.record(AuditEventType.LOGIN, user_id=alice.id, ip_address="192.0.2.1", detail="detail-one")
    log.record(AuditEventType.LOGOUT, user_id=alice.id, detail="detail-two")
    sign_in(browser, admin)
    page = browser.get("/admin/audit")
    assert page.text.index("detail-two") < page.text.index("detail-one")
    filtered = browser.get("/admin/audit?event=login")
    assert "detail-one" in filtered.text and "detail-two" not in filtered.text
    assert browser.get("/admin/audit?event=bogus&before=abc").status_int == 200


def test_audit_log_pages_back(browser, sign_in, admin, alice, dbsession):
    log = AuditLog(dbsession=dbsession)
    for i in range(60):
        log.record(AuditEventType.LOGIN, user_id=alice.id, detail=f"event-{i:02d}")
    sign_in(browser, admin)
    first = browser.get("/admin/audit")
    assert "event-59" in first.text and "event-09" not in first.text
    older = first.click(description="Older events")
    assert "event-09" in older.text and "event-59" not in older.text


def test_admin_ends_every_session_of_a_user(browser, sign_in, admin, alice, session_store, dbsession):
    raws = [session_store.create(user=alice)[0] for _ in range(2)]
    sign_in(browser, admin)
    assert "End all sessions" in browser.get("/admin/users").text
    response = browser.submit(f"/admin/users/{alice.id}/sessions/revoke", status=303)
    assert response.location.endswith("/admin/users?notice=user_sessions_revoked")
    assert all(session_store.dead_reason(session_store.find(raw)) == "revoked_by_admin" for raw in raws)
    event = dbsession.scalars(select(AuditEvent).where(AuditEvent.event == "user_sessions_ended_by_admin")).one()
    assert (event.user_id, event.actor_id, event.detail) == (alice.id, admin.id, "2 session(s) ended")


def test_non_admin_cannot_end_sessions_of_others(browser, sign_in, alice, bob, session_store):
    bob_raw, _ = session_store.create(user=bob)
    sign_in(browser, alice)
    browser.submit(f"/admin/users/{bob.id}/sessions/revoke", status=403)
    assert session_store.dead_reason(session_store.find(bob_raw)) is None


def test_anonymous_cannot_end_sessions(browser, bob, session_store):
    bob_raw, _ = session_store.create(user=bob)
    browser.post(f"/admin/users/{bob.id}/sessions/revoke", status=303)
    assert session_store.dead_reason(session_store.find(bob_raw)) is None


def test_unknown_user_is_404(browser, sign_in, admin):
    sign_in(browser, admin)
    browser.submit("/admin/users/999999/sessions/revoke", status=404)
    browser.submit("/admin/users/abc/sessions/revoke", status=404)


def test_admin_nav_only_for_admins(browser, sign_in, alice, admin):
    sign_in(browser, alice)
    assert "/admin/audit" not in browser.get("/").text
    sign_in(browser, admin)
    assert "/admin/audit" in browser.get("/").text
