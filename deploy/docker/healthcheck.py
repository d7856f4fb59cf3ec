#!/opt/venv/bin/python
"""The image's HEALTHCHECK: ask the service this container runs for its health, on its configured port.

The service is read from PID 1's command line (the service itself, or the init that started it), the port
from the same OPENCLAW_* variables the service reads. Exit 0 healthy, 1 not. An argument (`/readyz`) picks the
path of an HTTP service's check (default /healthz); the router's is always grpc.health.v1.

With mutual TLS on (OPENCLAW_TLS_CERT, OPENCLAW_TLS_KEY, OPENCLAW_TLS_CA, as the service reads them), the check
speaks TLS where the service does (the router's gRPC port, the executor's ops port), presents the service's own
certificate and verifies the service's against the CA, under a name from that same certificate.
"""

from __future__ import annotations

import http.client
import os
import sys
from typing import Any

# service: (port variable, default port, whether the port is HTTPS under mutual TLS). The gateway's HTTP port
# is the public ingress, never switched by OPENCLAW_TLS_*; the simulator does not read them.
HTTP_PORTS = {
    "services.gateway": ("OPENCLAW_GATEWAY_HTTP_PORT", "8080", False),
    "services.executor": ("OPENCLAW_EXECUTOR_METRICS_PORT", "9103", True),
    "services.simulator": ("OPENCLAW_SIMULATOR_PORT", "8090", False),
}


def tls_files() -> Any:
    """The service's TLS files (services.common.tls.TlsFiles) from its environment, or None when TLS is off."""
    names = ("OPENCLAW_TLS_CERT", "OPENCLAW_TLS_KEY", "OPENCLAW_TLS_CA")
    if not any(os.environ.get(name) for name in names):
        return None  # plaintext: skip importing the TLS stack
    from services.common import tls

    return tls.load_paths(*(os.environ.get(name) for name in names))


def _own_name(files: Any) -> str:
    """A DNS name of our own certificate, which the service (presenting that certificate) answers to."""
    from services.common import tls

    return next(iter(tls.dns_names(files)), "localhost")


def router_serving(listen: str) -> bool:
    """The standard grpc.health.v1 check against the router."""
    import grpc  # only the router's check needs gRPC: keep the HTTP checks light
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = listen.rsplit(":", 1)[1]
    files = tls_files()
    if files is None:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    else:
        from services.common import tls

        # 127.0.0.1 need not be in a production certificate: verify the router under a name that is.
        options = [("grpc.ssl_target_name_override", _own_name(files))]
        channel = grpc.secure_channel(f"127.0.0.1:{port}", tls.channel_credentials(files), options=options)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def http_ok(port: str, *, tls_capable: bool, path: str = "/healthz") -> bool:
    """GET `path` on loopback answers 200 (over HTTPS when the service serves TLS there)."""
    files = tls_files() if tls_capable else None
    connection = http.client.HTTPConnection("127.0.0.1", int(port), timeout=2)
    try:
        if files is not None:
            from services.common import tls

            connection.connect()
            connection.sock = tls.client_context(files).wrap_socket(
                connection.sock, server_hostname=_own_name(files)
            )
        connection.request("GET", path)
        return bool(connection.getresponse().status == 200)
    except OSError:  # refused, timed out, or the TLS handshake failed (ssl.SSLError is an OSError)
        return False
    finally:
        connection.close()


def healthy(command: str, path: str = "/healthz") -> bool:
    """Whether the service named in `command` answers its health check (True when no service runs)."""
    if "services.router" in command:
        return router_serving(os.environ.get("OPENCLAW_ROUTER_LISTEN", "0.0.0.0:50051"))
    for service, (variable, default, tls_capable) in HTTP_PORTS.items():
        if service in command:
            return http_ok(os.environ.get(variable, default), tls_capable=tls_capable, path=path)
    return True  # a one-off command, not a service: nothing to check


def main(argv: list[str]) -> int:
    """Exit status for the container runtime; a bad TLS setting is printed (it lands in the health log)."""
    with open("/proc/1/cmdline", "rb") as f:
        command = f.read().replace(b"\0", b" ").decode(errors="replace")
    try:
        return 0 if healthy(command, *argv[:1]) else 1
    except Exception as exc:  # e.g. an unreadable OPENCLAW_TLS_KEY: say which, and fail
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
