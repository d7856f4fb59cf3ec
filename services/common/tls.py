"""Mutual TLS between the services: the PEM files from settings as gRPC credentials and ssl contexts."""

# grpcio cannot be told a minimum TLS version: its servers and channels negotiate TLS 1.2 or 1.3 (two of our
# services always agree on 1.3). Where Python's ssl is used (the ops HTTP servers) TLS 1.3 is the minimum.

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.common.errors import InvalidInputError
from services.common.settings import CommonSettings

# The settings that name the three files, in the order cert, key, CA.
ENV_NAMES = ("OPENCLAW_TLS_CERT", "OPENCLAW_TLS_KEY", "OPENCLAW_TLS_CA")


@dataclass(frozen=True)
class TlsFiles:
    """This service's certificate chain and key, and the CA its peers must chain to (paths and PEM bytes)."""

    cert_path: Path
    key_path: Path
    ca_path: Path
    cert: bytes
    key: bytes
    ca: bytes


def _read(env: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"{env}: cannot read {path}: {exc.strerror or exc}") from None


def load_files(cert: Path, key: Path, ca: Path, *, names: Sequence[str] = ENV_NAMES) -> TlsFiles:
    """Read and check the three PEM files; a missing or mismatched file is named (by ``names``) in the error."""
    cert_name, key_name, ca_name = names
    files = TlsFiles(cert, key, ca, _read(cert_name, cert), _read(key_name, key), _read(ca_name, ca))
    checks = (
        (cert_name, cert, lambda: x509.load_pem_x509_certificates(files.cert)),
        (key_name, key, lambda: serialization.load_pem_private_key(files.key, password=None)),
        (ca_name, ca, lambda: x509.load_pem_x509_certificates(files.ca)),
    )
    for env, path, parse in checks:
        try:
            parse()
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(f"{env}: {path} is not a usable PEM file ({exc})") from None
    try:
        ssl.create_default_context().load_cert_chain(cert, key)
    except ssl.SSLError:
        raise InvalidInputError(f"{key_name}: {key} is not the key of the certificate {cert}") from None
    return files


def load_paths(
    cert: str | Path | None,
    key: str | Path | None,
    ca: str | Path | None,
    *,
    names: Sequence[str] = ENV_NAMES,
) -> TlsFiles | None:
    """The files at these paths for a client outside the services (SDK, health check); None when none is given."""
    given = dict(zip(names, (cert, key, ca), strict=True))
    missing = [name for name, path in given.items() if not path]
    if len(missing) == len(given):
        return None
    if missing:
        raise InvalidInputError(f"{', '.join(missing)}: required (mutual TLS needs all three files)")
    return load_files(Path(cert or ""), Path(key or ""), Path(ca or ""), names=names)


def dns_names(files: TlsFiles) -> list[str]:
    """The DNS names of our own certificate: a process checking itself on loopback dials under one of them."""
    leaf = x509.load_pem_x509_certificates(files.cert)[0]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.DNSName))


def load(settings: CommonSettings) -> TlsFiles | None:
    """The configured files, or None when mutual TLS is off (the settings ensure all three or none)."""
    if settings.tls_cert is None or settings.tls_key is None or settings.tls_ca is None:
        return None
    return load_files(settings.tls_cert, settings.tls_key, settings.tls_ca)


def server_credentials(files: TlsFiles, *, require_client_cert: bool = True) -> grpc.ServerCredentials:
    """gRPC server credentials; with require_client_cert a peer without a certificate from our CA is refused."""
    return grpc.ssl_server_credentials(
        [(files.key, files.cert)], root_certificates=files.ca, require_client_auth=require_client_cert
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """gRPC channel credentials: verify the server against our CA and present our certificate."""
    return grpc.ssl_channel_credentials(
        root_certificates=files.ca, private_key=files.key, certificate_chain=files.cert
    )


def server_context(files: TlsFiles, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """An ssl context for HTTP listeners: TLS 1.3 only, our certificate, peers verified against our CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(files.cert_path, files.key_path)
    context.load_verify_locations(cadata=files.ca.decode())
    # CERT_OPTIONAL still refuses a certificate that does not chain to our CA; it admits callers with none.
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """An ssl context for calling another service over HTTPS: TLS 1.3 only, our CA, our certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cadata=files.ca.decode())
    context.load_cert_chain(files.cert_path, files.key_path)
    return context
