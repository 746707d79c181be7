"""SmsService: the public API. Thin: authenticate, call the gateway, convert."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator

from sms.v1 import sms_pb2, sms_pb2_grpc

from server import limits
from server.admin import Admin
from server.auth import Caller, Role
from server.config import Config
from server.convert import conversation_to_proto, message_to_proto
from server.edge import Context, streaming, unary
from server.gateway import Gateway, validate_send
from server.hub import Hub
from server.inbox import Inbox
from server.quotas import SendRate, StreamSlots
from server.templates import Templates


class SmsServicer(sms_pb2_grpc.SmsServiceServicer):
    """Open to agents, admins and services alike, except the operator calls, which are for admins only."""

    def __init__(self, cfg: Config, gateway: Gateway, hub: Hub, admin: Admin) -> None:
        self.cfg = cfg
        self.gateway = gateway
        self.hub = hub
        self.admin = admin
        self.inbox = Inbox(gateway)
        self.templates = Templates(gateway.store.templates)
        self.streams = StreamSlots(cfg.max_streams_per_user)
        # The buckets live in the Redis the hub reads, shared by every replica.
        self.send_rate = SendRate(hub.redis, cfg.send_rate_per_user, cfg.send_burst_per_user)

    @unary()
    async def Send(self, request: sms_pb2.SendRequest, context: Context, caller: Caller) -> sms_pb2.SendResponse:
        req = validate_send(
            self.cfg,
            request.to,
            request.body,
            list(request.media_urls),
            request.contact_id,
            request.request_id,
            send_at=limits.timestamp("send_at", request.send_at) if request.HasField("send_at") else None,
            ignore_quiet_hours=request.ignore_quiet_hours,
        )
        doc, duplicate = await self.gateway.send(caller, req, functools.partial(self.send_rate.admit, caller.user_id))
        return sms_pb2.SendResponse(message=message_to_proto(doc), duplicate=duplicate)

    @unary()
    async def GetMessage(
        self, request: sms_pb2.GetMessageRequest, context: Context, caller: Caller
    ) -> sms_pb2.GetMessageResponse:
        doc = await self.gateway.message_for(caller, limits.ident("message_id", request.message_id))
        return sms_pb2.GetMessageResponse(message=message_to_proto(doc))

    @unary()
    async def GetConversation(
        self, request: sms_pb2.GetConversationRequest, context: Context, caller: Caller
    ) -> sms_pb2.GetConversationResponse:
        doc = await self.gateway.conversation_for(caller, limits.ident("conversation_id", request.conversation_id))
        return sms_pb2.GetConversationResponse(conversation=conversation_to_proto(doc))

    @unary()
    async def ListConversations(
        self, request: sms_pb2.ListConversationsRequest, context: Context, caller: Caller
    ) -> sms_pb2.ListConversationsResponse:
        docs, token = await self.gateway.list_conversations(
            caller, request.page_size, request.page_token, request.filter, request.query
        )
        return sms_pb2.ListConversationsResponse(
            conversations=[conversation_to_proto(d) for d in docs], next_page_token=token
        )

    @unary()
    async def SearchMessages(
        self, request: sms_pb2.SearchMessagesRequest, context: Context, caller: Caller
    ) -> sms_pb2.SearchMessagesResponse:
        hits, token = await self.gateway.search_messages(caller, request.query, request.page_size, request.page_token)
        return sms_pb2.SearchMessagesResponse(
            hits=[
                sms_pb2.MessageHit(message=message_to_proto(m), conversation=conversation_to_proto(c)) for m, c in hits
            ],
            next_page_token=token,
        )

    @unary()
    async def ListMessages(
        self, request: sms_pb2.ListMessagesRequest, context: Context, caller: Caller
    ) -> sms_pb2.ListMessagesResponse:
        docs, token = await self.gateway.list_messages(
            caller, limits.ident("conversation_id", request.conversation_id), request.page_size, request.page_token
        )
        return sms_pb2.ListMessagesResponse(messages=[message_to_proto(d) for d in docs], next_page_token=token)

    @unary()
    async def MarkConversationRead(
        self, request: sms_pb2.MarkConversationReadRequest, context: Context, caller: Caller
    ) -> sms_pb2.MarkConversationReadResponse:
        doc = await self.gateway.mark_read(caller, limits.ident("conversation_id", request.conversation_id))
        return sms_pb2.MarkConversationReadResponse(conversation=conversation_to_proto(doc))

    @streaming()
    async def Subscribe(
        self, request: sms_pb2.SubscribeRequest, context: Context, caller: Caller
    ) -> AsyncIterator[sms_pb2.SubscribeResponse]:
        """Events the caller may see; all_owners is honoured for admin/service and ignored for agents."""
        if limits.ident("conversation_id", request.conversation_id):
            # NOT_FOUND for a conversation the caller may not see, as GetConversation answers.
            await self.gateway.conversation_for(caller, request.conversation_id)
        with self.streams.hold(caller.user_id):
            # aclosing: on cancellation the hub's finally (unregistering) runs now, not at garbage collection.
            async with contextlib.aclosing(self.hub.subscribe(caller, request)) as stream:
                async for response in stream:
                    yield response

    # The inbox calls (issue 11): rules in server/assignment.py, server/inbox.py.
    @unary()
    async def UpdateConversation(
        self, request: sms_pb2.UpdateConversationRequest, context: Context, caller: Caller
    ) -> sms_pb2.UpdateConversationResponse:
        doc = await self.inbox.update(caller, request.conversation, list(request.update_mask.paths))
        return sms_pb2.UpdateConversationResponse(conversation=conversation_to_proto(doc))

    @unary()
    async def AssignConversation(
        self, request: sms_pb2.AssignConversationRequest, context: Context, caller: Caller
    ) -> sms_pb2.AssignConversationResponse:
        doc = await self.inbox.assign(
            caller, limits.ident("conversation_id", request.conversation_id), request.assignee
        )
        return sms_pb2.AssignConversationResponse(conversation=conversation_to_proto(doc))

    @unary()
    async def AddNote(
        self, request: sms_pb2.AddNoteRequest, context: Context, caller: Caller
    ) -> sms_pb2.AddNoteResponse:
        doc, _ = await self.inbox.add_note(
            caller, limits.ident("conversation_id", request.conversation_id), request.body, request.request_id
        )
        return sms_pb2.AddNoteResponse(message=message_to_proto(doc))

    @unary()
    async def GetInboxSummary(
        self, request: sms_pb2.GetInboxSummaryRequest, context: Context, caller: Caller
    ) -> sms_pb2.GetInboxSummaryResponse:
        mine, unread, unassigned = await self.inbox.summary(caller)
        return sms_pb2.GetInboxSummaryResponse(mine=mine, unread=unread, unassigned=unassigned)

    # Send later, cancel and retry (issue 12): rules in server/gateway.py and server/scheduling.py.
    @unary()
    async def CancelMessage(
        self, request: sms_pb2.CancelMessageRequest, context: Context, caller: Caller
    ) -> sms_pb2.CancelMessageResponse:
        doc = await self.gateway.cancel(caller, limits.ident("message_id", request.message_id))
        return sms_pb2.CancelMessageResponse(message=message_to_proto(doc))

    @unary()
    async def RetryMessage(
        self, request: sms_pb2.RetryMessageRequest, context: Context, caller: Caller
    ) -> sms_pb2.RetryMessageResponse:
        doc, duplicate = await self.gateway.retry(
            caller,
            limits.ident("message_id", request.message_id),
            limits.text("request_id", request.request_id, limits.REQUEST_ID_BYTES),
            functools.partial(self.send_rate.admit, caller.user_id),
        )
        return sms_pb2.RetryMessageResponse(message=message_to_proto(doc), duplicate=duplicate)

    # Templates (canned replies): rules in server/templates.py.
    @unary()
    async def CreateTemplate(
        self, request: sms_pb2.CreateTemplateRequest, context: Context, caller: Caller
    ) -> sms_pb2.CreateTemplateResponse:
        return sms_pb2.CreateTemplateResponse(template=await self.templates.create(caller, request.template))

    @unary()
    async def ListTemplates(
        self, request: sms_pb2.ListTemplatesRequest, context: Context, caller: Caller
    ) -> sms_pb2.ListTemplatesResponse:
        templates, token = await self.templates.list(caller, request.page_size, request.page_token, request.query)
        return sms_pb2.ListTemplatesResponse(templates=templates, next_page_token=token)

    @unary()
    async def UpdateTemplate(
        self, request: sms_pb2.UpdateTemplateRequest, context: Context, caller: Caller
    ) -> sms_pb2.UpdateTemplateResponse:
        template = await self.templates.update(caller, request.template, list(request.update_mask.paths))
        return sms_pb2.UpdateTemplateResponse(template=template)

    @unary()
    async def DeleteTemplate(
        self, request: sms_pb2.DeleteTemplateRequest, context: Context, caller: Caller
    ) -> sms_pb2.DeleteTemplateResponse:
        await self.templates.delete(caller, limits.ident("template_id", request.template_id))
        return sms_pb2.DeleteTemplateResponse()

    # The operator calls: admins only. The service role reads and writes every conversation like an admin, but
    # its token lives in other systems, so it may not trigger Twilio syncs nor read the operator's queue figures.
    @unary(Role.ADMIN)
    async def GetQueueStats(
        self, request: sms_pb2.GetQueueStatsRequest, context: Context, caller: Caller
    ) -> sms_pb2.GetQueueStatsResponse:
        return await self.admin.queue_stats()

    @unary(Role.ADMIN)
    async def GetDeliveryStats(
        self, request: sms_pb2.GetDeliveryStatsRequest, context: Context, caller: Caller
    ) -> sms_pb2.GetDeliveryStatsResponse:
        return await self.admin.delivery_stats(request)

    @unary(Role.ADMIN)
    async def SyncFromTwilio(
        self, request: sms_pb2.SyncFromTwilioRequest, context: Context, caller: Caller
    ) -> sms_pb2.SyncFromTwilioResponse:
        return await self.admin.sync_from_twilio(request)
