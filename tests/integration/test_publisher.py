"""Publishing is confirmed by the broker, or it fails: never a silent drop."""

from __future__ import annotations

import pytest
from aio_pika.abc import AbstractRobustConnection

from openclaw.v1 import tasks_pb2
from services.common.errors import UnavailableError
from services.common.publisher import TaskPublisher
from services.common.topology import Topology


def _envelope() -> tasks_pb2.TaskEnvelope:
    return tasks_pb2.TaskEnvelope(task_id="t1", tenant="acme", type="workflow.run", attempt=1)


async def test_confirmed_publish_lands_in_the_task_queue(
    amqp: AbstractRobustConnection, topology: Topology
) -> None:
    publisher = TaskPublisher(amqp, topology)
    await publisher.publish(_envelope())
    channel = await amqp.channel()
    queue = await channel.get_queue(topology.task_queue)
    message = await queue.get(timeout=5)
    assert message is not None and message.message_id == "t1"
    await message.ack()
    await publisher.close()


async def test_unroutable_message_fails_the_publish(
    amqp: AbstractRobustConnection, topology: Topology
) -> None:
    publisher = TaskPublisher(amqp, topology)
    await publisher.publish(_envelope())  # declares the topology
    channel = await amqp.channel()
    await channel.queue_delete(topology.task_queue)
    with pytest.raises(UnavailableError):
        await publisher.publish(_envelope())
    await publisher.close()
