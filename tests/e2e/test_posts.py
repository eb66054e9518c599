"""Posts as two people use them: one writes, edits and deletes; the other, in a second browser,
reads but is never offered the owner's buttons, and gets the 403 page at the edit address."""

import pytest

from tests.conftest import random_name
from tests.e2e.browser import PHONE, REQUIRES_CHROMIUM
from tests.e2e.product import sign_in

pytestmark = [pytest.mark.e2e, REQUIRES_CHROMIUM]


def test_create_edit_delete_and_another_user_cannot_edit(product, open_browser):
    alice = open_browser()
    sign_in(alice, product, random_name("alice"))
    alice.click_link("Posts", within="nav.main-nav")
    assert alice.text(".empty-state h2") == "No posts yet"
    alice.screenshot("flow-posts-empty")

    alice.click_link("Write the first post", within="main")
    assert alice.heading() == "New post"
    alice.click_button("Publish")
    assert alice.driver.title.startswith("Error: ")
    assert alice.text(".form-errors h2") == "There is a problem with your post"
    assert alice.focused()["cls"] == "form-errors"
    alice.screenshot("flow-post-form-error")
    alice.type_into("#title", "Quarterly planning notes")
    alice.type_into("#body", "Agenda:\n1. What went well\n2. What to change\n\nBring your ideas.")
    alice.click_button("Publish")
    assert alice.text("[data-testid=flash]") == "Your post was published."
    assert alice.heading() == "Quarterly planning notes"
    assert "notice=" not in alice.path_qs, "app.js takes the one-off message out of the address bar"
    post_path = alice.path

    alice.click_link("Edit", within="[data-testid=post-actions]")
    assert alice.heading() == "Edit post"
    alice.type_into("#title", "Quarterly planning: agenda")
    alice.click_button("Save changes")
    assert alice.text("[data-testid=flash]") == "Your changes were saved."
    assert alice.heading() == "Quarterly planning: agenda"
    alice.screenshot("flow-post-edited")

    bob = open_browser()
    sign_in(bob, product, random_name("bob"), start="/posts")
    assert bob.path == "/posts", "signing in from a private page returns to it"
    assert [e.text for e in bob.find_all(".post-item h2")] == ["Quarterly planning: agenda"]
    bob.click_link("Quarterly planning: agenda", within="main")
    assert bob.path == post_path
    assert not bob.find_all("[data-testid=post-actions]")
    assert "/edit" not in bob.source and "/delete" not in bob.source
    bob.get(product.url + post_path + "/edit")
    assert bob.heading() == "You cannot do that"
    assert bob.text(".error-code").endswith("403")
    bob.screenshot("flow-forbidden")

    alice.get(product.url + "/posts")
    alice.screenshot("flow-posts")
    alice.set_size(PHONE)
    alice.get(product.url + "/posts")
    alice.screenshot("flow-posts-phone")
    alice.get(product.url + post_path)
    alice.find("details.confirm summary").click()
    assert alice.button("Delete post").is_displayed()
    alice.screenshot("flow-delete-confirmation-phone", full_page=False)
    alice.click_button("Delete post")
    assert alice.path == "/posts"
    assert alice.text("[data-testid=flash]") == "The post was deleted."
    assert alice.text(".empty-state h2") == "No posts yet"

    bob.get(product.url + post_path)
    assert bob.heading() == "Page not found"
