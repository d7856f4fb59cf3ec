"""The chat side of the gateway's configuration: channels, the agents that answer on them, and schedules.

One YAML file (``OPENCLAW_GATEWAY_CHANNELS_FILE``)::

    channels:
      - {name: slack-main, kind: slack, tenant: acme, bot_user_id: U0BOT,
         secrets: {signing_secret: "${SLACK_SIGNING_SECRET}", bot_token: "${SLACK_BOT_TOKEN}"}}
    agents:
      - {name: helper, model: gpt-4-mini, system_prompt: "Be brief.", channels: [slack-main], policy: queue}
    schedules:
      - {id: digest, tenant: acme, cron: "0 8 * * *", timezone: Europe/Paris, template: daily-digest}

Secrets are written as ``${VAR}`` and read from the environment, so the file itself holds none. Every problem is
reported with its place in the file, and start-up stops.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.errors import InvalidInputError
from services.common.taskstore import check_tenant
from services.gateway.channels import KINDS, ChannelConfig
from services.gateway.conversations import AgentConfig
from services.gateway.schedules import Schedule

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class ChatSetup:
    channels: dict[str, ChannelConfig] = field(default_factory=dict)
    agents: dict[str, AgentConfig] = field(default_factory=dict)
    schedules: list[Schedule] = field(default_factory=list)


def load(path: str | Path | None, env: Mapping[str, str] | None = None) -> ChatSetup:
    """The setup in ``path`` (nothing configured when it is empty)."""
    if not path:
        return ChatSetup()
    source = Path(path)
    try:
        doc = yaml.safe_load(source.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"{source}: cannot read: {exc}") from None
    return parse(doc, env if env is not None else os.environ, source=str(source))


def parse(doc: Any, env: Mapping[str, str], *, source: str = "<channels>") -> ChatSetup:
    if not isinstance(doc, dict) or set(doc) - {"channels", "agents", "schedules"}:
        raise InvalidInputError(f"{source}: expected a mapping with channels, agents and schedules")
    channels: dict[str, ChannelConfig] = {}
    for i, raw in enumerate(doc.get("channels") or []):
        where = f"{source}: channels[{i}]"
        cfg = _channel(raw, env, where)
        if cfg.name in channels:
            raise InvalidInputError(f"{where}.name: {cfg.name!r} is defined twice")
        channels[cfg.name] = cfg
    agents: dict[str, AgentConfig] = {}
    for i, raw in enumerate(doc.get("agents") or []):
        where = f"{source}: agents[{i}]"
        agent = _agent(raw, where)
        unknown = [c for c in agent.channels if c not in channels]
        if unknown:
            raise InvalidInputError(f"{where}.channels: unknown channel(s) {', '.join(unknown)}")
        agents[agent.name] = agent
    taken = [c for a in agents.values() for c in a.channels]
    twice = sorted({c for c in taken if taken.count(c) > 1})
    if twice:
        raise InvalidInputError(
            f"{source}: agents: channel(s) {', '.join(twice)} answered by more than one agent"
        )
    schedules = []
    for i, raw in enumerate(doc.get("schedules") or []):
        if not isinstance(raw, dict):
            raise InvalidInputError(f"{source}: schedules[{i}]: must be a mapping")
        try:
            schedules.append(Schedule(**raw))
        except TypeError as exc:
            raise InvalidInputError(f"{source}: schedules[{i}]: {exc}") from None
        except InvalidInputError as exc:
            raise InvalidInputError(f"{source}: schedules[{i}]: {exc.message}") from None
        target = schedules[-1].deliver_to
        if target is not None:
            channel = channels.get(target["channel"])
            if channel is None:
                raise InvalidInputError(
                    f"{source}: schedules[{i}].deliver_to.channel: unknown channel {target['channel']!r}"
                )
            if channel.tenant != schedules[-1].tenant:
                raise InvalidInputError(
                    f"{source}: schedules[{i}].deliver_to.channel: {channel.name!r} belongs to another tenant"
                )
    return ChatSetup(channels, agents, schedules)


def _channel(raw: Any, env: Mapping[str, str], where: str) -> ChannelConfig:
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{where}: must be a mapping")
    allowed = {
        "name",
        "kind",
        "tenant",
        "account",
        "api_base",
        "secrets",
        "bot_user_id",
        "allow_senders",
        "groups_require_mention",
    }
    extra = sorted(set(raw) - allowed)
    if extra:
        raise InvalidInputError(f"{where}: unknown field(s) {', '.join(extra)}")
    name, kind, tenant = str(raw.get("name", "")), str(raw.get("kind", "")), str(raw.get("tenant", ""))
    if not _NAME.match(name):
        raise InvalidInputError(f"{where}.name: lowercase letters, digits, '-' and '_'")
    if kind not in KINDS:
        raise InvalidInputError(f"{where}.kind: {kind!r} is not one of {', '.join(sorted(KINDS))}")
    try:
        check_tenant(tenant)
    except InvalidInputError:
        raise InvalidInputError(f"{where}.tenant: {tenant!r} is not a tenant id") from None
    secrets = raw.get("secrets") or {}
    if not isinstance(secrets, dict):
        raise InvalidInputError(f"{where}.secrets: must be a mapping")
    return ChannelConfig(
        name=name,
        kind=kind,
        tenant=tenant,
        account=str(raw.get("account", "")),
        api_base=str(raw.get("api_base", "")),
        secrets={k: _expand(str(v), env, f"{where}.secrets.{k}") for k, v in secrets.items()},
        bot_user_id=str(raw.get("bot_user_id", "")),
        allow_senders=tuple(str(s) for s in raw.get("allow_senders") or ()),
        groups_require_mention=bool(raw.get("groups_require_mention", True)),
    )


def _agent(raw: Any, where: str) -> AgentConfig:
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{where}: must be a mapping")
    try:
        agent = AgentConfig(
            **{**raw, "channels": tuple(raw.get("channels") or ()), "tools": tuple(raw.get("tools") or ())}
        )
    except TypeError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None
    if not _NAME.match(agent.name) or not agent.model:
        raise InvalidInputError(f"{where}: name (lowercase) and model are required")
    if agent.policy not in ("queue", "merge"):
        raise InvalidInputError(f"{where}.policy: queue or merge, not {agent.policy!r}")
    return agent


def _expand(value: str, env: Mapping[str, str], where: str) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if not env.get(name):
            raise InvalidInputError(f"{where}: environment variable {name} is not set")
        return env[name]

    return _VAR.sub(one, value)
