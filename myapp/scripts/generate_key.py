"""Print a new key for myapp.tokens.encryption_keys (Fernet: 32 random bytes, url-safe base64).

To rotate: put the new key first and keep the old one after it; once every session made before
has ended (myapp.session.absolute_timeout), remove the old key.

Example:
  MYAPP_TOKEN_KEYS="$(myapp-generate-key) $MYAPP_TOKEN_KEYS"
"""

from cryptography.fernet import Fernet

from myapp.scripts import parser


def main(argv=None):
    parser("myapp-generate-key", __doc__, ini=False).parse_args(argv)
    print(Fernet.generate_key().decode())
    return 0
