"""HTTP server choice for the gateway: uvicorn vs hypercorn vs granian, HTTP/1.1, h2c and h2 over TLS 1.3.

Method: each server runs in its own process, one worker on uvloop (granian: its own Rust runtime, one worker),
serving the gateway's own Starlette app (``create_app`` with its observability middleware: span, metrics,
traceparent) restricted to the probe routes; the endpoint is ``GET /healthz`` (a small JSON body), so what is
measured is the server plus the app's per-request overhead, not Redis or RabbitMQ. The one client for every
cell is ``h2load`` (nghttp2): ``--h1`` for HTTP/1.1, prior knowledge for h2c, ALPN ``h2`` for TLS (the server's
context refuses anything below TLS 1.3). Each cell: a 1 s warm-up run, then ``-n`` requests over ``-c``
connections (``-m`` concurrent streams each for HTTP/2, one for HTTP/1.1); req/s is h2load's figure and p50 is
the median of the per-request times from h2load's ``--log-file``. Client and server share the machine's cores.

    .venv/bin/python -m bench.gateway                 # every server × protocol, prints a Markdown table
    .venv/bin/python -m bench.gateway serve hypercorn --port 8443 --tls   # one server, to poke at by hand
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp

SERVERS = ("uvicorn", "hypercorn", "granian", "gateway-h2")
PROTOCOLS = ("h1", "h2c", "h2-tls13")
# gateway-h2: the gateway's own HTTP/2 listener (granian embedded in an asyncio loop, services/gateway/httpserver.py).
_SUPPORTS = {
    "uvicorn": {"h1"},
    "hypercorn": set(PROTOCOLS),
    "granian": set(PROTOCOLS),
    "gateway-h2": set(PROTOCOLS),
}


def make_app() -> ASGIApp:
    """The gateway's ASGI stack with only the probe routes (no Redis, RabbitMQ or router needed)."""
    from services.gateway.http_api import ProbeRoutes, create_app

    async def ready() -> tuple[bool, dict[str, str]]:
        return True, {}

    return create_app([ProbeRoutes(ready).routes()])


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1/localhost; returns (cert, key) paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def serve(server: str, port: int, cert: Path | None, key: Path | None) -> None:
    """Run one server in this process until killed."""
    import uvloop

    app = make_app()
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(
            app,
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            log_level="warning",
            lifespan="off",
        )
    elif server == "hypercorn":
        from hypercorn.asyncio import serve as hserve
        from hypercorn.config import Config

        from services.gateway.httpserver import tls13_context

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        config.errorlog = None
        if cert is not None and key is not None:
            context = tls13_context(cert, key)
            config.create_ssl_context = lambda: context  # type: ignore[method-assign]
            config.certfile, config.keyfile = str(cert), str(key)  # the TLS path
        uvloop.run(hserve(app, config, mode="asgi"))  # type: ignore[arg-type]
    elif server == "granian":
        from granian.constants import HTTPModes, Interfaces, Loops
        from granian.server import Server

        Server(
            "bench.gateway:make_app",
            address="127.0.0.1",
            port=port,
            interface=Interfaces.ASGI,
            workers=1,
            loop=Loops.uvloop,
            http=HTTPModes.auto,
            factory=True,
            log_enabled=False,
            ssl_cert=cert,
            ssl_key=key,
        ).serve()
    elif server == "gateway-h2":
        from services.gateway.httpserver import Http2Server

        async def run() -> None:
            tls = (cert, key) if cert is not None and key is not None else None
            h2 = Http2Server(
                app,
                "127.0.0.1",
                None if tls else port,
                tls_port=port if tls else None,
                tls_files=tls,
                drain_s=1,
            )
            await h2.start()
            await asyncio.Event().wait()

        uvloop.run(run())
    else:
        raise SystemExit(f"unknown server {server!r}; known: {', '.join(SERVERS)}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


def h2load(url: str, protocol: str, n: int, c: int, m: int, log: Path | None) -> dict[str, Any]:
    """One h2load run; req/s and (with a log file) p50 in ms."""
    args = ["h2load", "-n", str(n), "-c", str(c), "-m", "1" if protocol == "h1" else str(m), url]
    if protocol == "h1":
        args.insert(1, "--h1")
    if log is not None:
        log.unlink(missing_ok=True)  # h2load appends to an existing log
        args[1:1] = ["--log-file", str(log)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    # "done", not "succeeded": h2load's HTTP/1.1 parser counts hypercorn's status line (no reason phrase,
    # "HTTP/1.1 200 ") as a failure although the response is complete; errors and timeouts are not done.
    ok = int(re.search(r"(\d+) done", out).group(1))  # type: ignore[union-attr]
    result: dict[str, Any] = {"rps": rps, "ok": ok, "n": n}
    if log is not None:
        times = [int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.strip()]
        result["p50_ms"] = statistics.median(times) / 1000 if times else float("nan")
    return result


def run(n: int, c: int, m: int, repeats: int, servers: tuple[str, ...] = SERVERS) -> None:
    """Measure every server × protocol cell and print a Markdown table."""
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = self_signed(Path(tmp))
        for server in servers:
            for protocol in PROTOCOLS:
                if protocol not in _SUPPORTS[server]:
                    rows.append((server, protocol, "not supported", ""))
                    continue
                port = _free_port()
                tls = protocol == "h2-tls13"
                cmd = [sys.executable, "-m", "bench.gateway", "serve", server, "--port", str(port)]
                if tls:
                    cmd += ["--cert", str(cert), "--key", str(key)]
                env = {**os.environ, "PYTHONWARNINGS": "ignore"}
                proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
                try:
                    _wait_listening(port)
                    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/healthz"
                    h2load(url, protocol, max(n // 5, 100), c, m, None)  # warm-up
                    results = [h2load(url, protocol, n, c, m, Path(tmp) / "log.tsv") for _ in range(repeats)]
                finally:
                    proc.terminate()
                    proc.wait(10)
                rps = statistics.median(r["rps"] for r in results)
                p50 = statistics.median(r["p50_ms"] for r in results)
                failed = sum(r["n"] - r["ok"] for r in results)
                rows.append(
                    (
                        server,
                        protocol,
                        f"{rps:,.0f}",
                        f"{p50:.2f}" + (f" ({failed} failed)" if failed else ""),
                    )
                )
                print(f"{server:9} {protocol:9} {rps:9.0f} req/s  p50 {p50:.2f} ms", file=sys.stderr)
    print(f"\nn={n} c={c} m={m} (HTTP/2 streams per connection), median of {repeats} runs\n")
    print("| server | protocol | req/s | p50 ms |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    one = sub.add_parser("serve")
    one.add_argument("server", choices=SERVERS)
    one.add_argument("--port", type=int, default=8080)
    one.add_argument("--cert", type=Path)
    one.add_argument("--key", type=Path)
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("-c", type=int, default=16)
    parser.add_argument("-m", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help="comma-separated subset of " + ", ".join(SERVERS)
    )
    args = parser.parse_args()
    if args.cmd == "serve":
        serve(args.server, args.port, args.cert, args.key)
    else:
        run(args.n, args.c, args.m, args.repeats, tuple(args.servers.split(",")))


if __name__ == "__main__":
    main()
