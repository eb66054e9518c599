"""Sessions ending as people meet them: a double click (or Enter pressed twice) on Sign out or
on a confirmation, Back onto a page whose session ended elsewhere, an edit sent after another tab
signed out."""

import pytest

from tests.conftest import random_name
from tests.e2e import accessibility
from tests.e2e.browser import REQUIRES_CHROMIUM
from tests.e2e.product import at_provider_form, sign_in
from tests.support.live import COOKIE

pytestmark = [pytest.mark.e2e, REQUIRES_CHROMIUM]

LANDING = "Sign in once. Work safely."


def session_cookie(browser, product):
    cookies = browser.driver.execute_cdp_cmd("Network.getCookies", {"urls": [product.url + "/"]})["cookies"]
    return [c for c in cookies if c["name"] == COOKIE]


def signed_out_everywhere(browser, product, name):
    """The person is signed out here (landing page, no cookie, no live session) and at the
    provider: its own page says nobody is signed in, and the next sign-in asks for a name."""
    # Where the browser stops: home, or a page of the provider's (its sign-out confirmation).
    browser.wait(lambda d: (product.owns(d.current_url) and browser.path == "/") or "/_dev/idp/" in d.current_url)
    browser.settle()
    over_a_real_network(browser, latency_ms=0)
    assert product.owns(browser.driver.current_url), browser.driver.current_url
    assert browser.heading() == LANDING
    notice = [e.text for e in browser.find_all("[data-testid=session-ended]")]
    assert not browser.find_all("[data-testid=user-name]")
    assert session_cookie(browser, product) == []
    assert all(s.ended_at is not None for s in product.sessions_of(name))
    browser.get(product.idp + "/_dev/idp/")
    assert "Nobody is signed in at this provider in this browser." in browser.text("main"), "still signed in there"
    assert notice == ["You have signed out."]
    browser.get(product.url + "/")
    browser.click_link("Sign in", within="main")
    at_provider_form(browser)


def over_a_real_network(browser, latency_ms: int = 300):
    """Every request takes ``latency_ms`` longer, as away from loopback: a second click or key
    press then falls, as it does for people, while the first request is still on its way."""
    browser.driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": latency_ms, "downloadThroughput": -1, "uploadThroughput": -1},
    )


def double_click(browser, button):
    from selenium.webdriver.common.action_chains import ActionChains

    # Two clicks where the pointer rests, as a hand makes them (two at once would be one
    # navigation: Chromium lets the second replace the first before it is sent).
    ActionChains(browser.driver).move_to_element(button).click().pause(0.05).click().perform()


def enter_twice(browser, button):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    browser.driver.execute_script("arguments[0].focus();", button)
    ActionChains(browser.driver).send_keys(Keys.ENTER).pause(0.05).send_keys(Keys.ENTER).perform()


def test_signing_out_twice_quickly_signs_out_here_and_at_the_provider(product, open_browser):
    """A double click (or Enter pressed twice) on Sign out sent two sign-outs before b741b40: the
    second, answered after the first had ended the session, took the browser home instead of
    through the provider's sign-out, and the person stayed signed in there."""
    browser = open_browser()
    name = random_name("olga")
    sign_in(browser, product, name, start="/posts")
    for twice in (double_click, enter_twice):
        logouts = product.stats()["backchannel_logouts_sent"]
        over_a_real_network(browser)
        twice(browser, browser.button("Sign out", within="header"))
        signed_out_everywhere(browser, product, name)
        assert product.stats()["backchannel_logouts_sent"] == logouts + 1, twice.__name__
        browser.type_into("input[name=name]", name)
        browser.click_button("Sign in", within="form")
        browser.wait(lambda d: product.owns(d.current_url) and browser.path == "/")
        browser.settle()


# Records, when a page comes back whole from the back/forward cache, whether it was visible then.
RESTORED_PROBE = """
window.addEventListener("pageshow", function (event) {
  if (event.persisted) { sessionStorage.setItem("e2e-restored", getComputedStyle(document.body).visibility); }
});
"""


def test_back_never_shows_a_session_that_ended_elsewhere(product, open_browser):
    """Chromium keeps no-store pages in its back/forward cache while no cookie changes: a laptop
    whose session was signed out from the phone showed its signed-in sessions page again on Back,
    name and all, until the next click. Now such a page stays hidden, is found stale, and gives way
    to the signed-out page, whose Sign in again comes back to it."""
    laptop = open_browser()
    laptop.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RESTORED_PROBE})
    name = random_name("vera")
    sign_in(laptop, product, name, start="/account/sessions")
    laptop.click_link("Posts", within="nav.main-nav")
    phone = open_browser()
    sign_in(phone, product, name, start="/account/sessions")
    other = next(card for card in phone.find_all("[data-testid=session]") if "This device" not in card.text)
    phone.navigate_by(other.find_element("css selector", "button").click)
    assert phone.text("[data-testid=flash]") == "That session was signed out."

    laptop.driver.back()
    laptop.wait(lambda d: d.execute_script("return sessionStorage.getItem('e2e-restored')"))
    assert laptop.driver.execute_script("return sessionStorage.getItem('e2e-restored')") == "hidden", (
        "the signed-in page was shown from the cache"
    )
    laptop.wait(lambda d: laptop.path == "/signed-out")
    laptop.settle()
    assert laptop.path_qs == "/signed-out?next=%2Faccount%2Fsessions"
    assert laptop.heading() == "You have been signed out"
    assert not laptop.find_all("[data-testid=user-name]")
    # Why, as a page load would have said (the check cleared the cookie: it left the reason for
    # this page alone, once; whoever loads it next is told nothing more).
    assert laptop.text("[data-testid=signed-out-reason]") == "This session was signed out from your list of sessions."
    laptop.get(product.url + "/signed-out")
    assert laptop.text("[data-testid=signed-out-reason]") == "Your session has ended."

    # A page whose session is still the browser's comes back at once, visible, without a request.
    phone.click_link("Posts", within="nav.main-nav")
    phone.driver.execute_script("sessionStorage.removeItem('e2e-restored')")
    phone.driver.back()
    phone.wait(lambda d: d.execute_script("return document.readyState") == "complete" and phone.path == "/account/sessions")
    phone.wait(lambda d: d.execute_script("return !document.documentElement.classList.contains('is-rechecking')"))
    assert phone.heading() == "Where you are signed in"
    assert phone.text("[data-testid=user-name]") == name.title()


@pytest.mark.parametrize("network", ["offline", "slow"])
def test_back_shows_nothing_of_an_ended_session_when_the_check_cannot_be_made(product, open_browser, network):
    """A check that could not be made showed the page as it was: whoever is at a laptop signed out
    from the phone took it offline, pressed Back and saw its signed-in page, name and data (and
    with a server slower than 3 s, the page was shown after 3 s). Now such a page is loaded again
    instead, and never shows; the skip link's #main does not turn that load into a jump."""
    import time

    laptop = open_browser()
    laptop.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RESTORED_PROBE})
    name = random_name("wanda")
    sign_in(laptop, product, name, start="/account/sessions")
    laptop.driver.execute_script("document.querySelector('.skip-link').click()")
    assert laptop.driver.current_url.endswith("/account/sessions#main")
    laptop.click_link("Posts", within="nav.main-nav")
    phone = open_browser()
    sign_in(phone, product, name, start="/account/sessions")
    other = next(card for card in phone.find_all("[data-testid=session]") if "This device" not in card.text)
    phone.navigate_by(other.find_element("css selector", "button").click)

    laptop.driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": network == "offline", "latency": 6000 if network == "slow" else 0,
         "downloadThroughput": -1, "uploadThroughput": -1},
    )
    laptop.driver.back()

    def restored(driver):
        try:
            return driver.execute_script("return sessionStorage.getItem('e2e-restored')")
        except Exception:  # already replaced by the browser's own offline page
            return True

    laptop.wait(restored)
    time.sleep(4)  # past the 3 s the check is given; the slow network's answer takes 6 s
    shown = [e for e in laptop.find_all("[data-testid=user-name]") if e.is_displayed()]
    assert not shown, "the signed-in page of an ended session was shown"
    over_a_real_network(laptop, latency_ms=0)
    if network == "slow":
        laptop.wait(lambda d: product.owns(d.current_url) and not d.find_elements("css selector", "html.is-rechecking"),
                    timeout=30)
        laptop.settle()
        assert not [e for e in laptop.find_all("[data-testid=user-name]") if e.is_displayed()]


# What a browser without BroadcastChannel (or a tab that missed its message) looks like to app.js.
WITHOUT_BROADCAST_CHANNEL = "Object.defineProperty(window, 'BroadcastChannel', {value: undefined, configurable: true});"


@pytest.mark.parametrize("told", [True, False], ids=["told", "not-told"])
def test_changes_to_a_post_survive_a_session_that_ended_in_another_tab(product, open_browser, told):
    """Only the new-post form kept a draft: changes typed into the edit form of a tab whose session
    was signed out in another tab were refused, and after signing in again the form came back as
    the post was, every change lost. (And the post is then deleted with a double click.) Told of
    the sign-out, the tab shows the signed-out page and Sign in again; not told (no
    BroadcastChannel), its Save is refused and sends it to sign in; the changes come back either way."""
    browser = open_browser()
    if not told:
        browser.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WITHOUT_BROADCAST_CHANNEL})
    name = random_name("pia")
    sign_in(browser, product, name)
    browser.get(product.url + "/posts/new")
    browser.type_into("#title", "Minutes")
    browser.click_button("Publish")
    post = browser.path
    editing = browser.driver.current_window_handle
    browser.click_link("Edit", within="main")
    browser.type_into("#title", "Minutes, corrected")
    browser.type_into("#body", "Two hours of careful work.")

    browser.driver.switch_to.new_window("tab")
    browser.get(product.url + "/posts")
    browser.click_button("Sign out", within="header")
    browser.wait(lambda d: product.owns(d.current_url) and browser.path == "/")
    browser.driver.close()
    browser.driver.switch_to.window(editing)

    if told:
        browser.wait(lambda d: browser.path == "/signed-out")
        browser.settle()
        assert browser.text("[data-testid=signed-out-reason]") == "You signed out."
        browser.click_link("Sign in again", within="main")
    else:
        browser.click_button("Save changes")
    at_provider_form(browser)  # signed out at the provider too: it asks who is there
    browser.type_into("input[name=name]", name)
    browser.click_button("Sign in", within="form")
    browser.wait(lambda d: product.owns(d.current_url) and browser.path == post + "/edit")
    browser.settle()
    assert browser.find("#title").get_attribute("value") == "Minutes, corrected"
    assert browser.find("#body").get_attribute("value") == "Two hours of careful work."
    assert browser.text("[data-draft-restored]") == "Your unsaved changes were restored. Check them and save when ready."
    browser.click_button("Save changes")
    assert browser.text("[data-testid=flash]") == "Your changes were saved."
    assert browser.heading() == "Minutes, corrected"

    # Saved: the form shows the post as it is now. Cancel throws away what was typed.
    browser.click_link("Edit", within="main")
    assert not browser.find("[data-draft-restored]").is_displayed()
    browser.type_into("#title", "Never mind")
    browser.click_link("Cancel", within="form")
    browser.click_link("Edit", within="main")
    assert browser.find("#title").get_attribute("value") == "Minutes, corrected"
    assert not browser.find("[data-draft-restored]").is_displayed()

    # A double click on "Delete post" (forms.confirm is sent once): the second, answered after the
    # first had deleted the post, showed "Page not found" instead of "The post was deleted.".
    browser.get(product.url + post)
    browser.find("details.confirm summary").click()
    over_a_real_network(browser)
    double_click(browser, browser.button("Delete post"))
    browser.wait(lambda d: browser.path == "/posts" or browser.find_all(".error-code"))
    browser.settle()
    over_a_real_network(browser, latency_ms=0)
    assert browser.heading() == "Posts"
    assert browser.text("[data-testid=flash]") == "The post was deleted."


def test_a_draft_is_never_given_to_the_next_person_in_the_tab(product, open_browser):
    """Drafts were keyed by form only: on a shared computer, a person who left a new post half
    typed (their session then ran out) had it restored into the next person's New post form, in
    the same tab, to read or even publish under their own name. And Sign out left every draft of
    the tab in sessionStorage."""
    browser = open_browser()
    first, second = random_name("una"), random_name("vic")
    sign_in(browser, product, first, start="/posts/new")
    browser.type_into("#title", "Letter to my doctor")
    browser.type_into("#body", "The results were not good.")
    product.end_sessions_by_time(first)

    browser.get(product.url + "/login?prompt=login&next=%2Fposts%2Fnew")
    at_provider_form(browser)
    browser.type_into("input[name=name]", second)
    browser.click_button("Sign in", within="form")
    browser.wait(lambda d: product.owns(d.current_url) and browser.path == "/posts/new")
    browser.settle()
    assert browser.text("[data-testid=user-name]") == second.title()
    assert browser.find("#title").get_attribute("value") == ""
    assert browser.find("#body").get_attribute("value") == ""
    assert not browser.find("[data-draft-restored]").is_displayed()
    assert "The results were not good." not in str(browser.js_storage()["session"])

    browser.type_into("#title", "Shopping list")
    assert any(k.startswith("myapp-draft:") for k in browser.js_storage()["session"])
    browser.click_button("Sign out", within="header")
    browser.wait(lambda d: product.owns(d.current_url) and browser.path == "/")
    browser.settle()
    assert not [k for k in browser.js_storage()["session"] if k.startswith("myapp-draft:")]


def test_a_sign_in_page_left_open_too_long_says_so_and_comes_back_to_the_page(product, open_browser):
    """The sign-in's binding cookie runs out with its transaction (10 minutes): the provider's form
    used after that came back without it, and the person was told the sign-in "was started in
    another browser"."""
    from sqlalchemy import update

    from myapp.models import LoginTransaction
    from myapp.models.meta import utcnow

    browser = open_browser()
    browser.get(product.url + "/posts")
    at_provider_form(browser)
    # Ten minutes later, as the browser and the server see it.
    browser.driver.execute_cdp_cmd("Network.deleteCookies", {"name": COOKIE + "_login", "url": product.url + "/"})
    with product.engine.begin() as connection:
        connection.execute(update(LoginTransaction).values(expires_at=utcnow()))
    name = random_name("rosa")
    browser.type_into("input[name=name]", name)
    browser.click_button("Sign in", within="form")
    browser.wait(lambda d: product.owns(d.current_url))
    browser.settle()
    assert browser.heading() == "Sign-in did not work"
    assert "This sign-in took too long. Please start again." in browser.text("main")
    browser.click_link("Sign in again", within="main")
    browser.wait(lambda d: product.owns(d.current_url) and browser.path == "/posts")
    browser.settle()
    assert browser.text("[data-testid=user-name]") == name.title()


def sign_in_again_in_another_tab(browser, product, name):
    """In a new tab, sign in again (the provider is asked to ask the name again): a new session,
    with a new CSRF token, replaces the old one, and no page of this site signed out in between
    (which would tell the other tabs). Leaves the browser in that tab."""
    browser.driver.switch_to.new_window("tab")
    browser.get(product.url + "/login?prompt=login&next=%2F")
    at_provider_form(browser)
    browser.type_into("input[name=name]", name)
    browser.click_button("Sign in", within="form")
    browser.wait(lambda d: product.owns(d.current_url) and browser.path == "/")
    browser.settle()


def test_sign_out_on_a_page_older_than_the_session_is_one_press_away(product, open_browser):
    """A page left open in one tab while another tab signed in again (or signed out and in again,
    unheard: no script, no BroadcastChannel) carries the old session's CSRF token: its Sign out
    got the 400 "This form has expired" page, which told the person to go back and reload. Now
    that refusal (still a refusal: the old token signs nothing out) offers a Sign out of the
    current session, and one press of it signs out here and at the provider."""
    browser = open_browser()
    name = random_name("ines")
    sign_in(browser, product, name, start="/posts")
    old_tab = browser.driver.current_window_handle
    sign_in_again_in_another_tab(browser, product, name)
    current = [s.handle for s in product.sessions_of(name) if s.ended_at is None]
    assert len(current) == 1

    browser.driver.switch_to.window(old_tab)
    browser.click_button("Sign out", within="header")
    assert browser.path == "/logout"
    assert browser.heading() == "Sign out?"
    assert name.title() in browser.text("main")
    assert accessibility.problems(browser) == []
    assert [s.handle for s in product.sessions_of(name) if s.ended_at is None] == current, "the old token signed out"
    logouts = product.stats()["backchannel_logouts_sent"]
    browser.click_button("Sign out", within="main")
    signed_out_everywhere(browser, product, name)
    assert product.stats()["backchannel_logouts_sent"] == logouts + 1


# What a browser without the Navigation API (window.navigation) looks like to the page's script.
WITHOUT_NAVIGATION_API = "Object.defineProperty(window, 'navigation', {value: undefined, configurable: true});"


@pytest.mark.parametrize("navigation_api", [True, False], ids=["navigation-api", "without-it"])
def test_a_form_sent_once_can_be_sent_again_after_stop(product, open_browser, navigation_api):
    """A data-submit-once form disabled its button on submit for good: a person who pressed the
    browser's Stop while it was on its way (a slow network) was left on the page with a button
    that did nothing until a reload. Chromium tells the page that the navigation was abandoned
    (the Navigation API's navigateerror): the button is given back at once. A browser without that
    API gets it back after 10 s, and not before (a double click stays one)."""
    import time

    # "none": Selenium does not wait for the form's navigation to end before pressing Stop.
    browser = open_browser(page_load_strategy="none")
    if not navigation_api:
        browser.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WITHOUT_NAVIGATION_API})
    name = random_name("tess")
    sign_in(browser, product, name, start="/posts/new")
    browser.wait_for_path("/posts/new")
    browser.type_into("#title", "Sent over a slow network")
    over_a_real_network(browser, latency_ms=3000)
    publish = browser.button("Publish")
    state = "var b = document.querySelector('main form[data-submit-once] button[type=submit]');" \
        "return [location.pathname, b.disabled, b.form.getAttribute('aria-busy')];"
    # Clicked, and seen disabled, from the page itself: Selenium waits for a navigation on its way
    # before its next command (a click, a script), but not before a DevTools command: Stop.
    sent = browser.driver.execute_async_script(
        "var done = arguments[arguments.length - 1], button = arguments[0];"
        "button.click();"
        "setTimeout(function () { done((function () {" + state + "})()); }, 200);",
        publish,
    )
    assert sent == ["/posts/new", True, "true"]
    browser.driver.execute_cdp_cmd("Page.stopLoading", {})
    if not navigation_api:
        time.sleep(2)
        assert browser.driver.execute_script(state) == ["/posts/new", True, "true"], "given back before any answer"
    browser.wait(lambda d: d.execute_script(state) == ["/posts/new", False, None], timeout=2 if navigation_api else 12)

    over_a_real_network(browser, latency_ms=0)
    browser.click_button("Publish")
    assert browser.heading() == "Sent over a slow network"
    browser.get(product.url + "/posts")
    browser.wait_for_path("/posts")
    assert [e.text for e in browser.find_all(".post-item h2")] == ["Sent over a slow network"]


def test_a_form_sent_once_stays_sent_when_a_link_within_the_page_is_followed(product, open_browser):
    """The Navigation API's navigateerror gave a data-submit-once form back, and it fires too when
    a same-document navigation (here "Skip to content", #main) supersedes the form's, while
    Chromium goes on sending the form: the button came back while the first press was still on
    its way, and a second press sent the form twice. Only an abandoned navigation gives it back."""
    browser = open_browser(page_load_strategy="none")
    name = random_name("sela")
    sign_in(browser, product, name, start="/posts/new")
    browser.wait_for_path("/posts/new")
    browser.type_into("#title", "Sent while skipping to the content")
    over_a_real_network(browser, latency_ms=3000)
    publish = browser.button("Publish")
    # All from the page itself: Selenium waits for a navigation on its way before its next command.
    seen = browser.driver.execute_async_script(
        "var done = arguments[arguments.length - 1], button = arguments[0];"
        "button.click();"
        "setTimeout(function () {"
        "  document.querySelector('a.skip-link').click();"
        "  setTimeout(function () { done([location.hash, button.disabled, button.form.getAttribute('aria-busy')]); }, 300);"
        "}, 200);",
        publish,
    )
    assert seen == ["#main", True, "true"], "the form was given back while still on its way"
    browser.wait(lambda d: browser.heading() == "Sent while skipping to the content", timeout=15)


def test_a_tab_left_open_after_signing_out_in_another_says_so(product, open_browser):
    """Signing out in one tab left another tab showing the signed-in page, name and data; the
    person's next click there (a link, or Save on an edit) went straight to the provider's sign-in
    form with no word of why (the browser had no cookie left: to the server, a stranger). Now the
    tab learns of the sign-out (a page of this site signed out, in another tab, says so to the
    others) and, once the server confirms its session is gone, gives way to the signed-out page:
    "You signed out.", and Sign in again returns to it, a draft typed there restored."""
    browser = open_browser()
    name = random_name("jade")
    sign_in(browser, product, name, start="/posts/new")
    browser.type_into("#title", "Typed before the other tab signed out")
    left_open = browser.driver.current_window_handle
    browser.driver.switch_to.new_window("tab")
    browser.get(product.url + "/posts")
    browser.click_button("Sign out", within="header")
    browser.wait(lambda d: product.owns(d.current_url) and browser.path == "/")
    browser.settle()
    assert browser.text("[data-testid=session-ended]") == "You have signed out."

    browser.driver.switch_to.window(left_open)
    browser.wait(lambda d: browser.path == "/signed-out")
    browser.settle()
    assert not browser.find_all("[data-testid=user-name]"), "the signed-in page is still shown"
    assert browser.heading() == "You have been signed out"
    assert browser.text("[data-testid=signed-out-reason]") == "You signed out."
    browser.click_link("Sign in again", within="main")
    at_provider_form(browser)  # signed out at the provider too: it asks who is there
    browser.type_into("input[name=name]", name)
    browser.click_button("Sign in", within="form")
    browser.wait(lambda d: product.owns(d.current_url) and browser.path == "/posts/new")
    browser.settle()
    assert browser.find("#title").get_attribute("value") == "Typed before the other tab signed out"
    assert browser.find("[data-draft-restored]").is_displayed()


def press_and_stop(browser, button, reached):
    """Press ``button`` over a network with 3 s of latency, wait until ``reached()`` says the
    server has done what the press asked, press Stop, and wait for the form to be given back
    (73b2659). Pressed from the page itself: Selenium waits for a navigation on its way before its
    next command, but not before a DevTools command (Stop)."""
    over_a_real_network(browser, latency_ms=3000)
    pressed = browser.driver.execute_async_script(
        "var done = arguments[arguments.length - 1], button = arguments[0];"
        "button.click();"
        "setTimeout(function () { done(button.disabled); }, 200);",
        button,
    )
    assert pressed is True, "the form was not sent"
    browser.wait(lambda d: reached(), timeout=5)
    browser.driver.execute_cdp_cmd("Page.stopLoading", {})
    browser.wait(lambda d: not d.execute_script("return arguments[0].disabled;", button), timeout=5)
    over_a_real_network(browser, latency_ms=0)


def test_delete_post_pressed_again_after_stop_says_the_post_may_be_deleted(product, open_browser):
    """Stop pressed while "Delete post" was on its way, after it had reached the server: the
    post was deleted, the page stayed, the button came back (73b2659), and pressing it again
    showed "Page not found". Still a 404 (SPEC.md), it now says there is no post there, that it
    may already have been deleted, and links to the posts."""
    from sqlalchemy import select

    from myapp.models import Post

    browser = open_browser(page_load_strategy="none")
    name = random_name("nora")
    sign_in(browser, product, name, start="/posts/new")
    browser.wait_for_path("/posts/new")
    browser.type_into("#title", "Deleted over a slow network")
    browser.click_button("Publish")
    browser.wait(lambda d: browser.heading() == "Deleted over a slow network")
    browser.settle()
    post_path = browser.path
    browser.find("details.confirm summary").click()

    def posts():
        with product.engine.connect() as connection:
            return connection.scalars(select(Post.title).where(Post.title == "Deleted over a slow network")).all()

    assert posts() == ["Deleted over a slow network"]
    press_and_stop(browser, browser.button("Delete post"), reached=lambda: posts() == [])
    assert browser.path == post_path

    browser.click_button("Delete post")
    assert browser.heading() == "No post here"
    assert "It may already have been deleted." in browser.text("main")
    assert accessibility.problems(browser) == []
    browser.click_link("Go to the posts", within="main")
    assert (browser.path, browser.heading()) == ("/posts", "Posts")


def test_sign_out_pressed_again_after_stop_signs_out_at_the_provider(product, open_browser):
    """Stop pressed while Sign out was on its way, after it had reached the server: the session
    ended here, but the browser never had the answer (its cookie kept, the provider's sign-out
    never reached), and Sign out pressed again landed on the landing page: still signed in at the
    provider, whose next sign-in asked no one anything. Now the second press goes on to the
    provider's sign-out, which asks (the ID token went with the session), and the person ends
    signed out there too."""
    browser = open_browser(page_load_strategy="none")
    name = random_name("lena")
    sign_in(browser, product, name, start="/posts")
    browser.wait_for_path("/posts")
    ended = lambda: all(s.ended_at is not None for s in product.sessions_of(name))  # noqa: E731
    press_and_stop(browser, browser.button("Sign out", within="header"), reached=ended)
    assert browser.path == "/posts" and session_cookie(browser, product), "the answer was had before Stop"
    logouts = product.stats()["backchannel_logouts_sent"]

    browser.click_button("Sign out", within="header")
    assert "/_dev/idp/" in browser.driver.current_url, f"not sent to the provider: {browser.driver.current_url}"
    assert browser.heading() == "Sign out?"
    browser.click_button("Sign out", within="form")
    browser.click_link("Return to the application", within="main")
    signed_out_everywhere(browser, product, name)
    assert product.stats()["backchannel_logouts_sent"] == logouts + 1


def test_signing_a_session_out_from_a_list_older_than_the_session_is_one_press_away(product, open_browser):
    """A sessions list left open in one tab while another tab signed in again carries the old
    session's CSRF token: a session's Sign out there got the 400 "This form has expired" page,
    which told the person to go back and reload. Still refused (the old token ends nothing), the
    page now names the session it was about and offers its Sign out with the current session's
    token: one press, and the list says it was signed out."""
    laptop = open_browser()
    name = random_name("mila")
    phone = open_browser()
    sign_in(phone, product, name, start="/")
    (phone_handle,) = [s.handle for s in product.sessions_of(name)]
    sign_in(laptop, product, name, start="/account/sessions")
    old_tab = laptop.driver.current_window_handle
    sign_in_again_in_another_tab(laptop, product, name)
    live = lambda: sorted(s.handle for s in product.sessions_of(name) if s.ended_at is None)  # noqa: E731
    before = live()
    assert phone_handle in before and len(before) == 2

    laptop.driver.switch_to.window(old_tab)
    card = next(c for c in laptop.find_all("[data-testid=session]") if "This device" not in c.text)
    laptop.navigate_by(card.find_element("css selector", "button").click)
    assert laptop.heading() == "Sign out this session?"
    assert "Chrome on Linux" in laptop.text("[data-testid=revoke-session]")
    assert name.title() in laptop.text("main")
    assert accessibility.problems(laptop) == []
    assert live() == before, "the old token signed a session out"
    # Its label names the session for screen readers, as on the list.
    laptop.navigate_by(laptop.find("[data-testid=revoke-again] form button").click)
    assert laptop.path == "/account/sessions"
    assert laptop.text("[data-testid=flash]") == "That session was signed out."
    assert phone_handle not in live() and len(live()) == 1
