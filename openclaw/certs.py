"""Development certificates for mutual TLS between the services: ``make certs`` (python -m openclaw.certs)."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICES = ("gateway", "router", "executor")
CA_NAME = "OpenClaw development CA"
# Re-issue a certificate this close to its end, so a `make certs` before work never leaves one about to expire.
RENEW_BEFORE = dt.timedelta(days=30)


def service_names(service: str) -> list[str]:
    """DNS names a service is dialled by: loopback, its compose service name and its Kubernetes Service names."""
    return [
        "localhost",
        service,
        f"openclaw-{service}",
        f"{service}.openclaw",
        f"{service}.openclaw.svc",
        f"{service}.openclaw.svc.cluster.local",
    ]


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key (small and fast to handshake with)."""
    return ec.generate_private_key(ec.SECP256R1())


def new_ca(
    name: str = CA_NAME, *, days: int = 3650, key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate and its key."""
    key = key or new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    dns_names: Sequence[str],
    *,
    ips: Sequence[str] = ("127.0.0.1", "::1"),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate for both ends of a hop (serverAuth and clientAuth), signed by the CA."""
    key = new_key()
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of a key (development only; production keys come from a secret store)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    # Keys are created 0600 from the start, never readable by others even for an instant.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _still_good(path: Path, ca: x509.Certificate, dns_names: Sequence[str]) -> bool:
    """Whether an existing leaf is signed by this CA, names every host and is not about to expire."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    fresh = cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > RENEW_BEFORE
    return fresh and set(dns_names) <= set(sans.get_values_for_type(x509.DNSName))


def write_dev_certs(out: Path, services: Sequence[str] = SERVICES) -> list[Path]:
    """Write ca.pem/ca.key and <service>.pem/<service>.key into out; keep what is still valid; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    ca_path, ca_key_path = out / "ca.pem", out / "ca.key"
    written: list[Path] = []
    try:
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if (
            not isinstance(loaded, ec.EllipticCurvePrivateKey)
            or ca.not_valid_after_utc < dt.datetime.now(dt.UTC) + RENEW_BEFORE
        ):
            raise ValueError("replace the CA")
        ca_key = loaded
    except (OSError, ValueError):
        ca, ca_key = new_ca()
        _write(ca_key_path, key_pem(ca_key), secret=True)
        _write(ca_path, cert_pem(ca))
        written += [ca_path, ca_key_path]
    for service in services:
        names = service_names(service)
        cert_path, key_path = out / f"{service}.pem", out / f"{service}.key"
        if key_path.exists() and _still_good(cert_path, ca, names):
            continue
        cert, key = issue(ca, ca_key, f"openclaw-{service}", names)
        _write(key_path, key_pem(key), secret=True)
        _write(cert_path, cert_pem(cert))
        written += [cert_path, key_path]
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the development CA and service certificates, say what changed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("var/certs"), help="directory (default var/certs)")
    args = parser.parse_args(argv)
    written = write_dev_certs(args.out)
    if written:
        print("wrote " + ", ".join(str(p) for p in written))
    else:
        print(f"{args.out}: certificates are up to date")
    print(
        f"use: OPENCLAW_TLS_CA={args.out}/ca.pem OPENCLAW_TLS_CERT={args.out}/<service>.pem "
        f"OPENCLAW_TLS_KEY={args.out}/<service>.key"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
