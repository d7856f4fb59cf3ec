#!/opt/venv/bin/python
"""The image's HEALTHCHECK: ask the service this container runs for its health, on its configured port.

The service is read from PID 1's command line (the service itself, or the init that started it), the port
from the same OPENCLAW_* variables the service reads. Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import os
import sys
import urllib.request

HTTP_PORTS = {
    "services.gateway": ("OPENCLAW_GATEWAY_HTTP_PORT", "8080"),
    "services.executor": ("OPENCLAW_EXECUTOR_METRICS_PORT", "9103"),
    "services.simulator": ("OPENCLAW_SIMULATOR_PORT", "8090"),
}


def router_serving(listen: str) -> bool:
    """The standard grpc.health.v1 check against the router."""
    import grpc  # only the router's check needs gRPC: keep the HTTP checks light
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = listen.rsplit(":", 1)[1]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def healthy(command: str) -> bool:
    """Whether the service named in `command` answers its health check (True when no service runs)."""
    if "services.router" in command:
        return router_serving(os.environ.get("OPENCLAW_ROUTER_LISTEN", "0.0.0.0:50051"))
    for service, (variable, default) in HTTP_PORTS.items():
        if service in command:
            url = f"http://127.0.0.1:{os.environ.get(variable, default)}/healthz"
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    return bool(reply.status == 200)
            except OSError:
                return False
    return True  # a one-off command, not a service: nothing to check


if __name__ == "__main__":
    with open("/proc/1/cmdline", "rb") as f:
        sys.exit(0 if healthy(f.read().replace(b"\0", b" ").decode(errors="replace")) else 1)
