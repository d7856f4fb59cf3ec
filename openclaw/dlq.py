"""`openclaw dlq list|show|replay|drop`: the dead-letter queue, a tenant at a time (settings from OPENCLAW_*).

With OPENCLAW_MASTER_KEYS and OPENCLAW_MASTER_KEY_ID set (the executor's), task data is opened and sealed with
the same keys as the services do: archived errors and re-created records stay encrypted at rest, replays publish
sealed envelopes; sealed data met without them stops the command with an error naming those settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING

from services.common.errors import OpenClawError

if TYPE_CHECKING:
    from services.executor.deadletters import DeadLetters


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `dlq` command to the `openclaw` subcommands."""
    dlq = sub.add_parser("dlq", help="dead-lettered tasks: list, show, replay or drop them")
    actions = dlq.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="dead letters with their error (collects the dead queue first)")
    listing.add_argument("--tenant", help="one tenant (default: every tenant with dead letters)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    show = actions.add_parser("show", help="one dead letter: its error and envelope")
    show.add_argument("--tenant", required=True)
    show.add_argument("id")
    replay = actions.add_parser("replay", help="reset tasks and publish them again as attempt 1")
    replay.add_argument("--tenant", required=True)
    replay.add_argument("--all", action="store_true", help="every dead letter of the tenant")
    replay.add_argument(
        "--from-start",
        action="store_true",
        help="drop completed step checkpoints too, so every step runs again (default: completed steps are kept)",
    )
    replay.add_argument("ids", nargs="*", metavar="ID")
    drop = actions.add_parser("drop", help="forget dead letters without replaying them")
    drop.add_argument("--tenant", required=True)
    drop.add_argument("ids", nargs="+", metavar="ID")
    dlq.set_defaults(func=cmd_dlq)


def cmd_dlq(args: argparse.Namespace) -> int:
    """Run one `openclaw dlq` action."""
    if args.action == "replay" and bool(args.all) == bool(args.ids):
        print("error: replay takes either --all or one or more IDs", file=sys.stderr)
        return 2
    return asyncio.run(_dlq(args))


async def _dlq(args: argparse.Namespace) -> int:
    import aio_pika
    from pydantic import ValidationError
    from redis.exceptions import RedisError

    from services.common.encryption import Keyring, Sealer
    from services.common.publisher import TaskPublisher
    from services.common.redis_client import open_redis
    from services.common.settings import CommonSettings
    from services.common.taskstore import TaskStore
    from services.common.topology import Topology
    from services.executor.deadletters import DeadLetters

    try:
        settings = CommonSettings()
    except ValidationError as exc:  # a bad master key, say: name the setting, not a traceback
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        print(f"error: settings: {problems}", file=sys.stderr)
        return 2
    redis = open_redis(settings.redis_url)
    master = settings.master_key_set()
    # The same sealer as the gateway's and the executor's task stores: same keys, same namespace.
    sealer = Sealer(Keyring(redis, settings.namespace, master)) if master else None
    connection = await aio_pika.connect_robust(
        settings.amqp_url, client_properties={"connection_name": "openclaw dlq"}
    )
    topology = Topology(settings.namespace)
    publisher = TaskPublisher(connection, topology)
    try:
        letters = DeadLetters(TaskStore(redis, settings.namespace, sealer=sealer), topology, publisher)
        channel = await connection.channel()
        collected = await letters.collect(channel)
        await channel.close()
        if collected.archived or collected.undecodable:
            moved = sum(collected.archived.values()) + collected.undecodable
            print(f"collected {moved} message(s) from {topology.dead_queue}", file=sys.stderr)
        return await _action(args, letters)
    except OpenClawError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except (aio_pika.exceptions.AMQPError, RedisError, ConnectionError) as exc:
        print(f"error: RabbitMQ or Redis: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        await publisher.close()
        await connection.close()
        await redis.aclose()


async def _action(args: argparse.Namespace, letters: DeadLetters) -> int:
    if args.action == "list":
        tenants = [args.tenant] if args.tenant else await letters.tenants()
        count = 0
        for tenant in tenants:
            for entry in await letters.list(tenant):
                count += 1
                row = entry.summary()
                if args.json:
                    print(json.dumps(row, ensure_ascii=False))
                else:
                    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["dead_ms"] / 1000))
                    print(
                        f"{row['tenant']}  {row['task_id']}  {when}Z  x{row['times']}  {row['code']}: {row['message']}"
                    )
        print(f"{count} dead letter(s)", file=sys.stderr)
        if not args.tenant and (undecodable := await letters.undecodable()):
            print(f"{undecodable} undecodable message(s) kept apart (not replayable)", file=sys.stderr)
        return 0
    if args.action == "show":
        entry = await letters.get(args.tenant, args.id)
        print(json.dumps(await letters.details(entry), indent=2, ensure_ascii=False))
        return 0
    ids = args.ids
    if args.action == "replay" and args.all:
        ids = [entry.task_id for entry in await letters.list(args.tenant)]
    failed = 0
    for task_id in ids:
        try:
            if args.action == "replay":
                await letters.replay(args.tenant, task_id, from_start=args.from_start)
                print(f"replayed {task_id}")
            else:
                await letters.drop(args.tenant, task_id)
                print(f"dropped {task_id}")
        except OpenClawError as exc:  # one bad id does not stop the others
            print(f"error: {task_id}: {exc.message}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0
