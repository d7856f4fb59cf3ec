"""The workflow executor: consumes task envelopes from RabbitMQ and runs their workflows.

Public surface (cheap to import; the gateway uses it to validate workflows at submit time):
``parse_workflow``, ``Workflow``, ``catalogue``, ``load_template``, ``list_templates``.
The process itself is ``python -m services.executor`` (see ``bootstrap.build``).
"""

from services.executor.dsl import Workflow, parse_workflow
from services.executor.ops import catalogue
from services.executor.templates import list_templates, load_template

__all__ = ["Workflow", "catalogue", "list_templates", "load_template", "parse_workflow"]
