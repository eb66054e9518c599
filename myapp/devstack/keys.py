"""The provider's RS256 signing key: generated once, kept in a private file, published as a JWKS."""

import json
import os
import secrets
from pathlib import Path

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

from myapp.settings import SettingsError

ALGORITHM = "RS256"
KEY_SIZE = 2048


def load_or_create_signing_key(path: Path) -> RSAKey:
    """Read the private key at ``path``, creating it (mode 0600) if it does not exist yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _create(path)
    except OSError as e:
        raise SettingsError(f"devstack.idp.key_file: cannot read {path}: {e.strerror or e}") from None
    return _parse(path, text)


def _parse(path: Path, text: str) -> RSAKey:
    try:
        key = RSAKey.import_key(json.loads(text))
    except (ValueError, TypeError, JoseError) as e:
        raise SettingsError(
            f"devstack.idp.key_file: {path} is not an RSA JWK ({e}); delete it to make a new one"
        ) from None
    if not key.is_private or not key.kid:
        raise SettingsError(f"devstack.idp.key_file: {path} must hold a private RSA JWK with a kid")
    return key


def _create(path: Path) -> RSAKey:
    path.parent.mkdir(parents=True, exist_ok=True)
    key = RSAKey.generate_key(KEY_SIZE, parameters={"use": "sig", "alg": ALGORITHM}, private=True, auto_kid=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as f:
            json.dump(key.as_dict(private=True), f)
        # link() never replaces: when another process created the file first, both use its key.
        os.link(temporary, path)
    except FileExistsError:
        return _parse(path, path.read_text(encoding="utf-8"))
    finally:
        temporary.unlink(missing_ok=True)
    return key


class TokenSigner:
    """Signs and verifies the provider's own JWTs with its one key."""

    def __init__(self, key: RSAKey):
        self.key = key
        self.public_key = RSAKey.import_key(key.as_dict(private=False))

    @property
    def kid(self) -> str:
        return self.key.kid

    def jwks(self) -> dict:
        return KeySet([self.public_key]).as_dict(private=False)

    def sign(self, claims: dict, *, typ: str = "JWT") -> str:
        header = {"alg": ALGORITHM, "kid": self.key.kid, "typ": typ}
        return jwt.encode(header, claims, self.key, algorithms=[ALGORITHM])

    def verify(self, token: str) -> jwt.Token:
        """Check the signature only (claims are the caller's business); raises ``JoseError``."""
        return jwt.decode(token, self.public_key, algorithms=[ALGORITHM])
