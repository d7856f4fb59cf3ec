"""Provider simulator: a real HTTP server speaking six providers' wire formats, clearly labelled."""

from services.simulator.app import (
    SIMULATED_HEADER,
    SIMULATED_MODELS,
    Simulator,
    create_app,
    serve,
    start,
)
from services.simulator.behaviour import (
    DEFAULT_MODEL,
    Behaviour,
    BehaviourError,
    BehaviourTable,
    Stats,
    load_behaviour_file,
)
from services.simulator.openai_api import SYSTEM_FINGERPRINT
from services.simulator.settings import SimulatorSettings

__all__ = [
    "DEFAULT_MODEL",
    "SIMULATED_HEADER",
    "SIMULATED_MODELS",
    "SYSTEM_FINGERPRINT",
    "Behaviour",
    "BehaviourError",
    "BehaviourTable",
    "Simulator",
    "SimulatorSettings",
    "Stats",
    "create_app",
    "load_behaviour_file",
    "serve",
    "start",
]
