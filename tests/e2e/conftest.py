"""The platform as real processes (simulator, router, executor, gateway) with a real S3 endpoint and OTLP receiver."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from openclaw.launcher import LocalStack, StackConfig
from services.gateway.auth import mint_token
from tests.e2e.chat import CHANNELS, ChatCallback
from tests.e2e.otlp import OtlpReceiver


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def chat_callback() -> Iterator[ChatCallback]:
    """Where the stack's generic webhook channel posts its replies (a real HTTP server on loopback)."""
    server = ChatCallback()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack(
    rabbitmq_url: str,
    redis_url: str,
    otlp: OtlpReceiver,
    s3_endpoint: str,
    chat_callback: ChatCallback,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalStack]:
    root: Path = tmp_path_factory.mktemp("stack")
    channels = root / "channels.yaml"
    channels.write_text(json.dumps(CHANNELS).replace("CALLBACK_URL", chat_callback.url))
    config = StackConfig.isolated(
        namespace=f"e2e{uuid.uuid4().hex[:8]}", log_dir=str(root / "log"), storage_root=str(root / "storage")
    )
    config.otlp_endpoint = otlp.endpoint
    config.extra_env = {
        "OPENCLAW_GATEWAY_CHANNELS_FILE": str(channels),
        "OPENCLAW_EXECUTOR_CREDENTIALS": json.dumps(
            {
                "aws_credentials": {
                    "aws_access_key_id": "testing",
                    "aws_secret_access_key": "testing",
                    "endpoint_url": s3_endpoint,
                    "region_name": "us-east-1",
                }
            }
        ),
    }
    stack = LocalStack(config)
    try:
        stack.start(timeout_s=60)
    except RuntimeError:
        for name in ("simulator", "router", "executor-0", "gateway"):
            print(f"--- {name} ---\n{stack.log_text(name)[-4000:]}")
        stack.stop()
        raise
    yield stack
    codes = stack.stop()
    stack.purge()
    assert all(code == 0 for code in codes.values()), f"unclean exits on SIGTERM: {codes}"


@pytest.fixture(scope="session")
def token(stack: LocalStack) -> str:
    return mint_token(
        stack.config.jwt_secret, tenant="acme", ttl_s=3600, issuer="openclaw", audience="openclaw-api"
    )
