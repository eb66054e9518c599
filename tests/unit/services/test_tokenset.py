"""Tokens in the clear and at rest."""

from datetime import datetime, timedelta, timezone

import pytest
from cryptography.fernet import Fernet

from myapp.services.tokenset import TokenCipher, TokenSet

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)


def test_a_response_becomes_a_token_set():
    tokens = TokenSet.from_response(
        {"access_token": "at", "refresh_token": "rt", "id_token": "idt", "expires_in": 300}, NOW
    )
    assert tokens == TokenSet("at", "rt", "idt", NOW + timedelta(seconds=300))


def test_a_refresh_without_new_refresh_or_id_token_keeps_the_previous_ones():
    previous = TokenSet("at-1", "rt-1", "idt-1", NOW)
    tokens = TokenSet.from_response({"access_token": "at-2", "expires_in": "60"}, NOW, previous=previous)
    assert tokens == TokenSet("at-2", "rt-1", "idt-1", NOW + timedelta(seconds=60))


# True read as 1 s, and 0 or less as expired at once, had every call refresh (helper-39).
@pytest.mark.parametrize("expires_in", [None, "soon", [], 10**30, float("nan"), True, False, 0, -60, "0", "-1"])
def test_an_unusable_expiry_means_use_until_refused(expires_in):
    """Whatever the provider sends as expires_in, never an error: no expiry, a reactive refresh."""
    assert TokenSet.from_response({"access_token": "at", "expires_in": expires_in}, NOW).access_token_expires_at is None


def test_tokens_never_show_in_a_repr():
    assert "secret" not in repr(TokenSet("secret-at", "secret-rt", "secret-idt", NOW))


def test_the_first_key_encrypts_and_every_key_decrypts():
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    written = TokenCipher([old]).encrypt("token")
    assert TokenCipher([new, old]).decrypt(written) == "token"
    assert TokenCipher([new]).decrypt(written) is None
    assert TokenCipher([new, old]).decrypt(TokenCipher([new, old]).encrypt("t2")) == "t2"
    assert TokenCipher([old]).decrypt(TokenCipher([new, old]).encrypt("t3")) is None
    assert TokenCipher([old]).encrypt(None) is None and TokenCipher([old]).decrypt(None) is None
