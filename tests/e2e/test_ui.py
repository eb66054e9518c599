"""A tour of every page, on a laptop-sized and a phone-sized screen: each is photographed
(test-artifacts/screenshots/{desktop,phone}-NN-page.png) and checked for accessibility problems
(labels, names, headings, focus, target sizes, contrast, no sideways scrolling)."""

import pytest

from tests.e2e import accessibility
from tests.e2e.browser import PHONE, REQUIRES_CHROMIUM
from tests.e2e.product import sign_in

pytestmark = [pytest.mark.e2e, REQUIRES_CHROMIUM]

POSTS = [
    ("Welcome to the team space", "This is where we share plans, notes and news.\n\nSay hello in a post of your own!"),
    (
        "Release checklist for Friday",
        "1. Freeze the main branch on Thursday evening.\n2. Run the full test suite, browsers included.\n"
        "3. Announce the release window to support.\n4. Ship, then watch the dashboards for an hour.",
    ),
]


def publish(browser, product, title, body):
    browser.get(product.url + "/posts/new")
    browser.type_into("#title", title)
    browser.type_into("#body", body)
    browser.click_button("Publish")
    assert browser.text("[data-testid=flash]") == "Your post was published."


def add_note(browser, text):
    browser.type_into("#note-text", text)
    browser.button("Add note", within="#notes").click()
    browser.wait(lambda d: browser.text("[data-status]") == "Note added.")


def test_every_page_on_a_laptop_and_a_phone(product, open_browser):
    found = {}

    def photograph(browser, name, *, audit=True):
        browser.screenshot(name)
        if audit:
            found[name] = accessibility.problems(browser)

    laptop = open_browser()
    phone = open_browser(size=PHONE)
    for browser, size in ((laptop, "desktop"), (phone, "phone")):
        browser.get(product.url + "/")
        photograph(browser, f"{size}-01-landing")

    # Plain names, for screenshots people read: this module has a provider and tables of its own.
    admin = "admin-ada"
    sign_in(laptop, product, admin, start="/", screenshot="desktop-02-sign-in")
    sign_in(phone, product, admin, start="/", screenshot="phone-02-sign-in")
    for title, body in POSTS:
        publish(laptop, product, title, body)
    post_path = laptop.path

    bob = open_browser()
    sign_in(bob, product, "bob")
    publish(bob, product, "Lunch on Thursday?", "Anyone up for the new noodle place around the corner?")
    bob.get(product.url + post_path + "/edit")
    assert bob.heading() == "You cannot do that"
    photograph(bob, "desktop-12-forbidden")

    laptop.get(product.url + "/")
    laptop.wait(lambda d: laptop.find(".note-form").is_displayed())
    add_note(laptop, "Call the venue about Friday")
    add_note(laptop, "Review Bob's lunch plan")
    laptop.get(product.url + "/")
    photograph(laptop, "desktop-03-dashboard")
    laptop.get(product.url + "/posts")
    photograph(laptop, "desktop-04-posts")
    laptop.get(product.url + post_path)
    photograph(laptop, "desktop-05-post")
    laptop.get(product.url + "/posts/new")
    laptop.type_into("#body", "Forgot the title")
    laptop.click_button("Publish")
    photograph(laptop, "desktop-06-post-form-error")
    laptop.get(product.url + "/account/sessions")
    photograph(laptop, "desktop-07-sessions")

    laptop.click_link("Users", within="nav.main-nav")
    confirm = [d for d in laptop.find_all("main details.confirm") if "Bob" in d.get_attribute("textContent")]
    assert len(confirm) == 1
    confirm[0].find_element("css selector", "summary").click()
    laptop.navigate_by(confirm[0].find_element("css selector", "button[type=submit]").click)
    assert laptop.text("[data-testid=flash]") == "Every session of that user was ended."
    photograph(laptop, "desktop-09-users")
    laptop.click_link("Audit", within="nav.main-nav")
    photograph(laptop, "desktop-08-audit")

    bob.get(product.url + "/posts")
    assert bob.heading() == "You have been signed out"
    assert bob.text("[data-testid=signed-out-reason]") == "An administrator signed you out."
    photograph(bob, "desktop-10-signed-out")
    laptop.get(product.url + "/posts/999999")
    photograph(laptop, "desktop-11-not-found")

    phone.get(product.url + "/")
    phone.wait(lambda d: phone.find(".note-form").is_displayed())
    photograph(phone, "phone-03-dashboard")
    for path, name in [
        ("/posts", "phone-04-posts"),
        (post_path, "phone-05-post"),
        ("/account/sessions", "phone-07-sessions"),
        ("/admin/audit", "phone-08-audit"),
        ("/admin/users", "phone-09-users"),
    ]:
        phone.get(product.url + path)
        photograph(phone, name)
    phone.get(product.url + "/posts/new")
    phone.click_button("Publish")
    photograph(phone, "phone-06-post-form-error")
    bob.set_size(PHONE)
    bob.get(product.url + "/signed-out?reason=revoked_by_admin&next=%2Fposts")
    photograph(bob, "phone-10-signed-out")

    report = [f"{page}: {problem}" for page, problems in found.items() for problem in problems]
    assert not report, "accessibility problems:\n" + "\n".join(report)
