"""What every OpenClaw service shares: settings, telemetry, breakers, hops, AMQP envelope and topology, task store."""
