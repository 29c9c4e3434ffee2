"""A self-signed certificate for tests that speak TLS on loopback (a reverse proxy, a Redis over
rediss://, a client metadata document host): one place, so that every such test trusts the same
kind of certificate."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path
    pem: bytes
    """The certificate, which is its own CA: what a client trusts."""


def self_signed(directory: Path, *names: str) -> TLSFiles:
    """A one-day certificate (its own CA) for `names` (default localhost), localhost and 127.0.0.1,
    written as cert.pem and key.pem into `directory`."""
    hosts = list(dict.fromkeys((*names, "localhost")))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([*(x509.DNSName(h) for h in hosts),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    files = TLSFiles(directory / "cert.pem", directory / "key.pem", pem)
    files.cert.write_bytes(pem)
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return files
