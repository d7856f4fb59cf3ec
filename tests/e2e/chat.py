"""A chat channel for the e2e stack: a generic signed webhook whose replies go to a loopback HTTP server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WEBHOOK_SECRET = "e2e-webhook-secret"
CHANNELS: dict[str, Any] = {
    "channels": [
        {
            "name": "ops-hook",
            "kind": "webhook",
            "tenant": "acme",
            "api_base": "CALLBACK_URL",
            "secrets": {"secret": WEBHOOK_SECRET},
        }
    ],
    "agents": [
        {
            "name": "calculator",
            "model": "echo",
            # The simulator scripts the model's tool call from this line (docs/simulator.md, sim-call).
            "system_prompt": 'Use your tools.\nsim-call: math_evaluate {"expression": "6 * 7"}',
            "tools": ["math_evaluate"],
            "channels": ["ops-hook"],
        }
    ],
    "schedules": [
        {
            "id": "sum-report",
            "tenant": "acme",
            "every_s": 3,
            "workflow": {"name": "sum-report", "steps": [{"type": "math_sum", "params": {"items": [1, 2]}}]},
            "deliver_to": {"channel": "ops-hook", "conversation": "reports"},
        }
    ],
}


class ChatCallback:
    """Records every reply the channel posts."""

    def __init__(self) -> None:
        self.replies: list[dict[str, Any]] = []
        received = self.replies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/reply"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
