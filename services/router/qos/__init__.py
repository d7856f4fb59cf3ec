"""Quality of service for model calls, in four stages: admission, queueing, dispatch and recovery.

- ``admission``: per-tenant request, token and spend budgets drawn from Redis in chunks (no round trip per call);
- ``scheduler``: priority classes with reserved shares, weighted fair sharing between tenants, deadlines, bounds;
- ``adaptive`` and ``balancer``: each deployment's concurrency limit follows 429s and latency (AIMD), and work goes
  to the better of two deployments drawn by weight (latency × load); ``rate`` keeps each deployment under the
  provider's requests and tokens per minute.
"""

from services.router.qos.adaptive import AdaptiveLimit
from services.router.qos.admission import QuotaExceededError, QuotaLeases, TenantQuota
from services.router.qos.balancer import Balancer, DeploymentLoad
from services.router.qos.rate import DeploymentRate
from services.router.qos.retry_budget import RetryBudget
from services.router.qos.scheduler import PRIORITIES, DeadlineShedError, FairScheduler, Grant, QueueFullError

__all__ = [
    "PRIORITIES",
    "AdaptiveLimit",
    "Balancer",
    "DeadlineShedError",
    "DeploymentLoad",
    "DeploymentRate",
    "FairScheduler",
    "Grant",
    "QueueFullError",
    "QuotaExceededError",
    "QuotaLeases",
    "RetryBudget",
    "TenantQuota",
]
