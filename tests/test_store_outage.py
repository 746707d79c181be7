"""MongoDB going away under a running server: calls answer UNAVAILABLE with a reason, never UNKNOWN."""

from __future__ import annotations

import grpc
import pytest
from sms.v1 import sms_pb2

from server.embedded import EmbeddedServer, start_mongo
from server.errors import error_reason
from server.reasons import Reason
from tests.support.identities import auth, unique_number, unique_user
from tests.support.in_process import house_env, running_house


async def test_calls_answer_unavailable_while_the_store_is_down(redis_server: EmbeddedServer) -> None:
    mongo = start_mongo(":memory:")
    try:
        async with running_house(house_env(mongo.uri, redis_server.uri)) as house:
            user = unique_user()
            sent = await house.sms.Send(
                sms_pb2.SendRequest(to=unique_number(), body="before the outage"), metadata=auth(user)
            )
            mongo.stop()
            for call in (
                house.sms.GetMessage(sms_pb2.GetMessageRequest(message_id=sent.message.id), metadata=auth(user)),
                house.sms.ListConversations(sms_pb2.ListConversationsRequest(), metadata=auth(user)),
                house.sms.Send(sms_pb2.SendRequest(to=unique_number(), body="during"), metadata=auth(user)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value.details()
                assert error_reason(info.value) == Reason.STORE_UNAVAILABLE
    finally:
        mongo.stop()
