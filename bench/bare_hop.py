"""The floor under the router's added latency: a bare grpc.aio server whose Chat posts to the simulator with aiohttp.

No QoS, breakers, metrics, tracing, audit or metering: the two transports the router is made of (a grpc.aio
server in front, an aiohttp client behind) and nothing else, on uvloop like the router. `bench.router` starts it
beside the router and measures it in the same run, so "added latency" can be read against what those two
transports cost on the machine at hand. Run alone: `python -m bench.bare_hop SIMULATOR_URL PORT`.
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import grpc
import uvloop

from openclaw.v1 import router_pb2, router_pb2_grpc


class BareRouter(router_pb2_grpc.RouterServiceServicer):  # type: ignore[misc]
    """Forwards Chat to the simulator's OpenAI endpoint; the reply's text comes back."""

    def __init__(self, simulator_url: str, http: aiohttp.ClientSession) -> None:
        self._url = f"{simulator_url}/v1/chat/completions"
        self._http = http

    async def Chat(self, request: router_pb2.ChatRequest, context: Any) -> router_pb2.ChatResponse:
        body = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        async with self._http.post(self._url, json=body) as response:
            reply = await response.json()
        message = reply["choices"][0]["message"]
        return router_pb2.ChatResponse(
            model=request.model, message=router_pb2.ChatMessage(role="assistant", content=message["content"])
        )


async def serve(simulator_url: str, port: int) -> None:
    async with aiohttp.ClientSession() as http:
        server = grpc.aio.server()
        router_pb2_grpc.add_RouterServiceServicer_to_server(BareRouter(simulator_url, http), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print(f"bare hop listening on 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1], int(sys.argv[2])))
