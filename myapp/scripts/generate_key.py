"""Print a new key for myapp.tokens.encryption_keys, or write a client key pair for private_key_jwt.

Without options: a Fernet key (32 random bytes, url-safe base64). To rotate: put the new key first
and keep the old one after it; once every session made before has ended
(myapp.session.absolute_timeout), remove the old key.

With --client-key DIR: a new private key (RSA 3072 bits, or EC P-256 with --ec) written to
DIR/client-key-<date>.pem, readable by its owner only, and a self-signed certificate of it
(DIR/client-key-<date>.crt, for providers such as Entra ID that register certificates). Name the
key in myapp.oidc.client_keys and the certificate in myapp.oidc.client_certificate; providers that
fetch keys read them from https://<your app>/auth/jwks.json. To rotate, see docs/deployment.md.

Examples:
  MYAPP_TOKEN_KEYS="$(myapp-generate-key) $MYAPP_TOKEN_KEYS"
  myapp-generate-key --client-key /etc/myapp/keys
  myapp-generate-key --client-key /etc/myapp/keys --ec
"""

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from myapp.scripts import fail, parser

PROG = "myapp-generate-key"
RSA_BITS = 3072
CERTIFICATE_LIFETIME = datetime.timedelta(days=730)


def main(argv=None):
    arguments = parser(PROG, __doc__, ini=False)
    arguments.add_argument("--client-key", metavar="DIR", type=Path, help="write a client key pair into DIR")
    arguments.add_argument("--ec", action="store_true", help="with --client-key: an EC P-256 key instead of RSA")
    arguments.add_argument(
        "--subject", metavar="NAME", help="with --client-key: the certificate's common name (default: myapp)"
    )
    options = arguments.parse_args(argv)
    if options.client_key is None:
        if options.ec:
            fail(PROG, "--ec goes with --client-key")
        if options.subject is not None:
            fail(PROG, "--subject goes with --client-key")
        print(Fernet.generate_key().decode())
        return 0
    key_path, certificate_path = write_client_key(
        options.client_key, ec_key=options.ec, subject="myapp" if options.subject is None else options.subject
    )
    print(f"wrote {key_path} (private, mode 0600) and {certificate_path}")
    # Absolute: a relative file: path is read from the server's working directory (/ under systemd).
    print(f"myapp.oidc.client_keys = file:{key_path.resolve()}")
    print(f"myapp.oidc.client_certificate = file:{certificate_path.resolve()}")
    return 0


def write_client_key(directory: Path, *, ec_key: bool = False, subject: str = "myapp") -> tuple[Path, Path]:
    if not directory.is_dir():
        fail(PROG, f"{directory} is not a directory")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    key_path = directory / f"client-key-{stamp}.pem"
    certificate_path = directory / f"client-key-{stamp}.crt"
    if key_path.exists() or certificate_path.exists():
        fail(PROG, f"{key_path} already exists; try again in a second")
    key = ec.generate_private_key(ec.SECP256R1()) if ec_key else rsa.generate_private_key(65537, RSA_BITS)
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        # Created with its final permissions: the private key is never readable by others, not even briefly.
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as f:
            f.write(pem)
        certificate_path.write_bytes(_self_signed(key, subject).public_bytes(Encoding.PEM))
    except OSError as e:
        fail(PROG, f"cannot write into {directory}: {e.strerror or e}")
    return key_path, certificate_path


def _self_signed(key, subject: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject[:64] or "myapp")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CERTIFICATE_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
