"""Private keys and certificates for private_key_jwt tests, written as PEM files."""

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID


def rsa_key(bits: int = 2048):
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def ec_key(curve=ec.SECP256R1):
    return ec.generate_private_key(curve())


def pem_of(key) -> str:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


def write_key(directory: Path, name: str, key) -> Path:
    path = directory / name
    path.write_text(pem_of(key))
    return path


def self_signed(key, directory: Path, name: str = "client.crt") -> Path:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "myapp test client")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = directory / name
    path.write_bytes(certificate.public_bytes(Encoding.PEM))
    return path
