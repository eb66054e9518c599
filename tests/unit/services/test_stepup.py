"""Step-up decisions: which rule covers a path, what satisfies it, RFC 9470 challenges."""

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from myapp.services.stepup import Requirement, challenges, parse_challenge, rule_for, satisfies
from myapp.settings import StepUpRule
from tests.support.own_process import runs_in_time

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
RULES = (
    StepUpRule("/api/payments/", acr_values=("mfa",)),
    StepUpRule("/admin", acr_values=("mfa", "hwk"), max_age=timedelta(minutes=15)),
)


@pytest.mark.parametrize(
    "path, prefix",
    [
        ("/admin", "/admin"), ("/admin/users", "/admin"), ("/administrator", None), ("/api/payments", "/api/payments/"),
        ("/api/payments/1", "/api/payments/"), ("/api/paymentsx", None), ("/login", None), ("/auth/callback", None),
        ("/static/app.css", None), ("/", None),
        # As a lenient server behind the proxy might read it (found by review): repeated slashes
        # (nginx merges them), case (case-insensitive servers), trailing spaces and dots (Windows).
        ("//admin", "/admin"), ("/api//payments/1", "/api/payments/"), ("/Admin/users", "/admin"),
        ("/API/Payments/1", "/api/payments/"), ("/admin ", "/admin"), ("/admin./users", "/admin"),
        ("/admin. . /x", "/admin"), ("/api/payments./1", "/api/payments/"), ("/administrator.", None),
        ("/api/paymentsx/", None),
        # Found by a second review: a format suffix on the path's last segment (Spring, Rails),
        # a path a server ends at a decoded "?" or "#", Unicode that folds or normalizes to it
        # (dotless ı, full-width, a combining accent, a zero-width space, a full-width solidus),
        # and whitespace or controls beyond the space.
        ("/admin.json", "/admin"), ("/Admin.JSON", "/admin"), ("/admin.", "/admin"), ("/api/payments/1.json", "/api/payments/"),
        ("/admin?x", "/admin"), ("/admin#x", "/admin"), ("/adm\u0131n", "/admin"),
        ("/\uff41\uff44\uff4d\uff49\uff4e", "/admin"), ("/adm\u0069\u0301n", "/admin"), ("/adm\u200bin", "/admin"),
        ("/api\uff0fpayments/1", "/api/payments/"), ("/api\\payments/1", "/api/payments/"), ("/admin\t", "/admin"),
        ("/admin\xa0", "/admin"), ("/admin\u3000/x", "/admin"), ("/\tadmin", "/admin"), ("/admin\x00", "/admin"),
        # A suffix only on the path's last segment, and only after the rule's whole segment.
        ("/admin.json/x", None), ("/adminx.json", None), ("/admi.json", None), ("/api/payments.json", "/api/payments/"),
        # Found by a third review: "¥" and "₩" (a "\\" to Windows' best fit), a full-width "?" or
        # ";" (NFKC), a ";" ending a segment (Tomcat, Spring), ASP.NET's cookieless segment, a
        # variation selector.
        ("/admin\u00a5export", "/admin"), ("/admin\u20a9x", "/admin"), ("/admin\uff1fx", "/admin"),
        ("/admin\uff1bx", "/admin"), ("/admin;jsessionid=1/x", "/admin"), ("/(S(x1))/admin", "/admin"),
        ("/(A(x))/api/payments/1", "/api/payments/"), ("/admin\ufe0f", "/admin"), ("/(S)/admin", None),
        # Found by a fourth review: cookieless segments as ASP.NET reads them, several values, a
        # "(" in one, and characters a folded reading would split or end at.
        ("/(A(x)S(y))/admin", "/admin"), ("/(S((x))/admin", "/admin"), ("/(S(x\uff1bz))/admin", "/admin"),
        ("/(S(x\uff1fz))/admin", "/admin"), ("/(S(x\uff0fz))/admin", "/admin"), ("/(S(x\u00a5z))/admin", "/admin"),
        ("/(s(x))/admin", "/admin"), ("/(S(x)/admin", None), ("/(S(x/y))/admin", None),
        # A script's suffix on any segment (the rest is its PATH_INFO), and the division slash
        # (a "/" to Windows' best fit).
        ("/Admin.aspx/x", "/admin"), ("/admin.php/x", "/admin"), ("/admin.PHP", "/admin"),
        ("/api/payments.php/1", "/api/payments/"), ("/admin\u2215users", "/admin"), ("/admin.phpx/x", None),
    ],
)
def test_the_most_specific_rule_covers_a_path(path, prefix):
    rule = rule_for(RULES, path)
    assert (rule.prefix if rule else None) == prefix


def test_a_rule_with_a_dot_in_its_prefix_is_matched_segment_by_segment():
    rules = (StepUpRule("/api/reports/v1.2", acr_values=("mfa",)),)
    for covered in ("/api/reports/v1.2", "/api/reports/V1.2/x", "/api/reports/v1.2.json", "/api/reports/v1.2./x"):
        assert rule_for(rules, covered) is not None, covered
    for other in ("/api/reports/v1", "/api/reports/v1.3", "/api/reports/v1.20", "/api/reports/v1/2"):
        assert rule_for(rules, other) is None, other


@pytest.mark.parametrize(
    "acr, auth_time, ok",
    [
        ("mfa", NOW - timedelta(minutes=5), True),
        ("hwk", NOW - timedelta(minutes=15), True),
        ("mfa", NOW - timedelta(minutes=16), False),
        ("pwd", NOW, False),
        (None, NOW, False),
        ("mfa", None, False),
    ],
)
def test_what_satisfies_a_rule(acr, auth_time, ok):
    session = SimpleNamespace(acr=acr, auth_time=auth_time)
    assert satisfies(session, Requirement((RULES[1],)), NOW) is ok


NESTED = (
    StepUpRule("/admin/audit", max_age=timedelta(minutes=15)),
    StepUpRule("/admin/users", acr_values=("hwk", "mfa"), max_age=timedelta(hours=1)),
    StepUpRule("/admin", acr_values=("mfa", "hwk"), max_age=timedelta(hours=8)),
)


def test_every_rule_covering_a_path_is_asked_together():
    """A longer prefix under a shorter one adds to its rule and never takes its place: the longest
    alone left /admin/audit open to a session without the second factor /admin asks (helper-109)."""
    audit = rule_for(NESTED, "/admin/audit/42")
    assert [rule.prefix for rule in audit.rules] == ["/admin/audit", "/admin"] and audit.prefix == "/admin/audit"
    assert audit.acr_values == ("mfa", "hwk") and audit.max_age == timedelta(minutes=15)
    users = rule_for(NESTED, "/Admin/Users")  # read leniently, each of them
    assert [rule.prefix for rule in users.rules] == ["/admin/users", "/admin"]
    assert users.acr_values == ("hwk", "mfa") and users.max_age == timedelta(hours=1)
    assert [rule.prefix for rule in rule_for(NESTED, "/admin/other").rules] == ["/admin"]


@pytest.mark.parametrize(
    "acr, signed_in_ago, ok",
    [
        ("mfa", timedelta(minutes=5), True),
        ("pwd", timedelta(minutes=5), False),  # recent, but not the second factor /admin asks
        ("mfa", timedelta(minutes=20), False),  # the second factor, but not as recent as /admin/audit asks
        (None, timedelta(0), False),
    ],
)
def test_a_session_meets_every_rule_covering_a_path(acr, signed_in_ago, ok):
    session = SimpleNamespace(acr=acr, auth_time=NOW - signed_in_ago)
    assert satisfies(session, rule_for(NESTED, "/admin/audit"), NOW) is ok


def test_rules_read_leniently_that_share_no_acr_value_still_each_hold():
    """The settings refuse nested rules that share no acr value; two that cover one path only as a
    lenient server reads it ask for the most specific one's, and a session is held to both."""
    rules = (StepUpRule("/api/up/admin", acr_values=("hwk",)), StepUpRule("/API/UP/", acr_values=("mfa",)))
    requirement = rule_for(rules, "/api/up/admin")
    assert requirement.acr_values == ("hwk",)
    assert not satisfies(SimpleNamespace(acr="hwk", auth_time=NOW), requirement, NOW)
    assert not satisfies(SimpleNamespace(acr="mfa", auth_time=NOW), requirement, NOW)


@pytest.mark.parametrize(
    "header, expected",
    [
        ('Bearer error="insufficient_user_authentication", acr_values="a b", max_age="5"', (("a", "b"), 5)),
        ('Bearer error=insufficient_user_authentication, max_age=300', ((), 300)),
        ('Basic realm="x", Bearer error="insufficient_user_authentication", acr_values="x"', (("x",), None)),
        ('Bearer error="insufficient_user_authentication", max_age="-5"', ((), None)),
        ('Bearer error="insufficient_user_authentication", max_age="99999999999"', ((), None)),
        # Digits to str.isdigit(), not to int(): a superscript, an Arabic-Indic digit, many digits.
        ('Bearer error="insufficient_user_authentication", max_age="\u00b2"', ((), None)),
        ('Bearer error="insufficient_user_authentication", max_age="\u0663\u0660"', ((), None)),
        ('Bearer error="insufficient_user_authentication", max_age="' + "9" * 4000 + '"', ((), None)),
        ('Bearer error="insufficient_user_authentication", acr_values="ok caf\u00e9"', (("ok",), None)),
        ('Bearer error="invalid_token"', None),
        ('Bearer error="invalid_token", error_description="not insufficient_user_authentication"', None),
        ("", None),
        (None, None),
        ("Bearer " + "x" * 5000 + " insufficient_user_authentication", None),
        # Long, and read all the same (over 4,096 characters it was not: the proxy then refreshed).
        ('Bearer error="insufficient_user_authentication", error_description="' + "x" * 5000 + '", acr_values="a"', (("a",), None)),
        ('Bearer error="insufficient_user_authentication", acr_values="' + "a " * 30_000 + '"', (("a",) * 10, None)),
        # As many as a sign-in may ask for: 1,000 characters in all (helper-83: /login's 500 on PostgreSQL).
        ('Bearer error="insufficient_user_authentication", acr_values="' + ("b" * 255 + " ") * 10 + '"', (("b" * 255,) * 3, None)),
        # Past MAX_CHALLENGE_LENGTH: not read (the proxy passes such a 401 back without a refresh).
        ('Bearer error="insufficient_user_authentication", error_description="' + "x" * 66_000 + '"', None),
    ],
)
def test_rfc_9470_challenges(header, expected):
    challenge = parse_challenge(header)
    assert (None if challenge is None else (challenge.acr_values, challenge.max_age)) == expected


def test_a_long_run_of_dots_is_read_in_linear_time():
    """Anyone can send a path under /api/ before signing in: a megabyte of dots, spaces or
    controls took an end-anchored pattern minutes of CPU, holding the GIL (found by review). Run
    in a process of its own, which can be stopped: the bound is a hundred times what reading
    them and starting Python take; the quadratic reading missed it by far."""
    script = (
        "from myapp.services.stepup import rule_for; from myapp.settings import StepUpRule\n"
        "rules = (StepUpRule('/admin', acr_values=('mfa',)),)\n"
        "for path in ('/api/up/x' + '.' * 1_000_000 + 'x', '/api/up/x' + '.\\t' * 500_000 + 'x'):\n"
        "    assert rule_for(rules, path) is None\n"
    )
    runs_in_time(script, timeout=60)


def test_a_long_challenge_is_read_in_linear_time():
    """An upstream's WWW-Authenticate header of one long word, quoted or not: the auth-param
    pattern, tried from each of its characters, took time growing with the square of its length
    (half a minute for 64 KB). In a process of its own, bounded at a thousand times what reading
    it and starting Python take."""
    script = (
        "from myapp.services.stepup import MAX_CHALLENGE_LENGTH, challenges, readable_challenge\n"
        "for word in ('a' * MAX_CHALLENGE_LENGTH, '\"' + 'a' * (MAX_CHALLENGE_LENGTH - 1)):\n"
        "    assert readable_challenge(word)\n"
        "    assert challenges('Bearer ' + word[7:]) == [('bearer', {})]\n"
    )
    runs_in_time(script, timeout=20)


@pytest.mark.parametrize(
    "header, expected",
    [
        # RFC 9110 section 11: a comma, a quote or what looks like a challenge inside a quoted
        # string, escaped with quoted-pairs or not, is text of that string.
        ('Bearer realm="a\\", DPoP error=\\"invalid_dpop_proof\\""',
         [("bearer", {"realm": 'a", DPoP error="invalid_dpop_proof"'})]),
        ('Bearer error="invalid_token", error_description="x, Bearer error=insufficient_user_authentication"',
         [("bearer", {"error": "invalid_token", "error_description": "x, Bearer error=insufficient_user_authentication"})]),
        ('Bearer error_description="say \\"hi\\", Basic realm=\\"r\\"", error="invalid_token"',
         [("bearer", {"error_description": 'say "hi", Basic realm="r"', "error": "invalid_token"})]),
        ('Bearer realm="a\\\\", DPoP error="use_dpop_nonce"',
         [("bearer", {"realm": "a\\"}), ("dpop", {"error": "use_dpop_nonce"})]),
        # Challenges without auth-params, a token68, and empty list elements.
        ('Negotiate, Basic realm="r",, Bearer', [("negotiate", {}), ("basic", {"realm": "r"}), ("bearer", {})]),
        ("Negotiate YII=, Bearer error=invalid_token", [("negotiate", {}), ("bearer", {"error": "invalid_token"})]),
        ("Basic realm = \"r\" , charset=UTF-8", [("basic", {"realm": "r", "charset": "UTF-8"})]),
        # What does not parse (a quote that closes early, or never), and all after it, is not read.
        ('Bearer error="invalid_token", realm="a, DPoP error="invalid_dpop_proof"', [("bearer", {"error": "invalid_token"})]),
        ('Bearer realm="a\\", DPoP error="invalid_dpop_proof', [("bearer", {})]),
        ('Bearer realm="never closed, DPoP error=invalid_dpop_proof', [("bearer", {})]),
        ('Bearer x"y, DPoP error="invalid_dpop_proof"', [("bearer", {})]),
        # Auth-params before any challenge belong to none.
        ('realm="x", Bearer error="invalid_token"', [("bearer", {"error": "invalid_token"})]),
    ],
)
def test_challenges_read_quoted_strings_as_rfc_9110_has_them(header, expected):
    assert challenges(header) == expected


def test_a_step_up_written_inside_another_challenges_quoted_string_is_none():
    """An upstream's error_description may echo what a caller sent: a challenge spelled in it is
    text, not a challenge (it was read as one: the browser was sent to sign in again)."""
    assert parse_challenge('Bearer error="invalid_token", error_description="a, Bearer error=insufficient_user_authentication"') is None
    assert parse_challenge(
        'Bearer error="invalid_token", error_description="\\", Bearer error=\\"insufficient_user_authentication\\""'
    ) is None
    assert parse_challenge(
        'Basic realm="\\"", Bearer error="insufficient_user_authentication", acr_values="a"'
    ).acr_values == ("a",)


@pytest.mark.parametrize(
    "header, expected",
    [
        ('Bearer acr_values=urn:mace:incommon:iap:silver, error="insufficient_user_authentication"',
         [("bearer", {"acr_values": "urn:mace:incommon:iap:silver", "error": "insufficient_user_authentication"})]),
        ("Bearer realm=api.example:443, error=invalid_token", [("bearer", {"realm": "api.example:443", "error": "invalid_token"})]),
        ('DPoP realm=https://api.example/, error="invalid_dpop_proof"',
         [("dpop", {"realm": "https://api.example/", "error": "invalid_dpop_proof"})]),
        ("Basic realm=files@example, Bearer", [("basic", {"realm": "files@example"}), ("bearer", {})]),
        # An unquoted value holds no comma, space or quote: no challenge hides in it.
        ('Bearer realm=a:b"c, DPoP error="invalid_dpop_proof"', [("bearer", {})]),
    ],
)
def test_an_unquoted_value_that_is_no_token_is_read_as_before(header, expected):
    """Servers leave URNs, URLs and host:port unquoted, though ':' and '/' are no token's: they
    were read up to whitespace, a comma or a quote, and reading them must not stop there, losing
    the error written after them."""
    assert challenges(header) == expected


def test_a_step_up_or_refused_proof_after_an_unquoted_urn_is_read():
    from myapp.services.dpop import challenge_error

    challenge = parse_challenge('Bearer acr_values=urn:example:mfa, error="insufficient_user_authentication", max_age=60')
    assert challenge is not None and challenge.acr_values == ("urn:example:mfa",) and challenge.max_age == 60
    assert challenge_error('DPoP realm=https://api.example/, error="invalid_dpop_proof"') == "invalid_dpop_proof"
