"""OpenClaw: the client SDK (`openclaw.router.ModelRouter`), the `openclaw` CLI and the generated gRPC stubs."""

__version__ = "0.1.0"
