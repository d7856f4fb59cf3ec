"""The mutual TLS settings, the PEM checks at start-up and the development certificates of `make certs`."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from pydantic import ValidationError

from openclaw import certs
from services.common import tls
from services.common.errors import InvalidInputError
from services.common.settings import CommonSettings


@pytest.fixture
def made(tmp_path: Path) -> Path:
    certs.write_dev_certs(tmp_path)
    return tmp_path


def test_tls_is_off_by_default_and_needs_all_three_files(made: Path) -> None:
    assert tls.load(CommonSettings()) is None
    with pytest.raises(ValidationError, match="OPENCLAW_TLS_KEY, OPENCLAW_TLS_CA: required"):
        CommonSettings(tls_cert=made / "router.pem")
    with pytest.raises(
        ValidationError, match="OPENCLAW_TLS_CERT, OPENCLAW_TLS_KEY, OPENCLAW_TLS_CA: required"
    ):
        CommonSettings(tls_required=True)
    settings = CommonSettings(
        tls_cert=made / "router.pem", tls_key=made / "router.key", tls_ca=made / "ca.pem", tls_required=True
    )
    files = tls.load(settings)
    assert files is not None and files.ca == (made / "ca.pem").read_bytes()


def test_bad_files_are_named_at_start_up(made: Path) -> None:
    with pytest.raises(InvalidInputError, match="OPENCLAW_TLS_CA: cannot read"):
        tls.load_files(made / "router.pem", made / "router.key", made / "missing.pem")
    with pytest.raises(
        InvalidInputError, match=r"OPENCLAW_TLS_KEY: .*router\.key is not the key of the certificate"
    ):
        tls.load_files(made / "gateway.pem", made / "router.key", made / "ca.pem")
    (made / "junk.pem").write_text("not a certificate")
    with pytest.raises(InvalidInputError, match=r"OPENCLAW_TLS_CERT: .*junk\.pem is not a usable PEM file"):
        tls.load_files(made / "junk.pem", made / "router.key", made / "ca.pem")


def test_server_contexts_accept_tls13_only(made: Path) -> None:
    files = tls.load_files(made / "router.pem", made / "router.key", made / "ca.pem")
    assert tls.server_context(files).minimum_version == ssl.TLSVersion.TLSv1_3
    assert tls.server_context(files).verify_mode == ssl.CERT_REQUIRED
    assert tls.server_context(files, require_client_cert=False).verify_mode == ssl.CERT_OPTIONAL
    assert tls.client_context(files).minimum_version == ssl.TLSVersion.TLSv1_3


def test_make_certs_names_every_host_and_chains_to_the_ca(made: Path) -> None:
    ca = x509.load_pem_x509_certificate((made / "ca.pem").read_bytes())
    for service in certs.SERVICES:
        cert = x509.load_pem_x509_certificate((made / f"{service}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {"localhost", service, f"{service}.openclaw.svc"} <= set(
            sans.get_values_for_type(x509.DNSName)
        )
        assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
        assert (made / f"{service}.key").stat().st_mode & 0o077 == 0  # keys are private to their owner


def test_make_certs_is_idempotent_and_repairs_what_is_missing(made: Path) -> None:
    before = {p.name: p.read_bytes() for p in made.iterdir()}
    assert certs.write_dev_certs(made) == []
    assert {p.name: p.read_bytes() for p in made.iterdir()} == before
    (made / "router.pem").unlink()
    assert certs.write_dev_certs(made) == [made / "router.pem", made / "router.key"]
    assert (made / "gateway.pem").read_bytes() == before["gateway.pem"]
    (made / "ca.key").unlink()  # a new CA: every certificate signed by the old one is re-issued
    written = certs.write_dev_certs(made)
    assert {p.name for p in written} == {"ca.pem", "ca.key"} | {
        f"{s}.{ext}" for s in certs.SERVICES for ext in ("pem", "key")
    }
