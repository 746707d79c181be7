"""Outbound messages moving through Twilio's statuses (queued → sending → sent → delivered), with status callbacks."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any

from devstack.twilio_sim.rules import Outcome
from devstack.twilio_sim.shapes import API_VERSION, Message, raw_dlr_done_date
from devstack.twilio_sim.state import AccountState
from devstack.twilio_sim.webhooks import WebhookPoster, new_idempotency_token

TERMINAL = ("delivered", "undelivered", "failed", "canceled", "received")


class Lifecycles:
    """Runs one task per outbound message that moves it on, and posts its status callbacks in order."""

    def __init__(self, state: AccountState, poster: WebhookPoster) -> None:
        self._state = state
        self._poster = poster
        self._running: dict[str, asyncio.Task[None]] = {}
        self._deliveries: set[asyncio.Task[None]] = set()
        # Each message's latest callback batch: the next one waits for it.
        self._callback_tail: dict[str, asyncio.Task[None]] = {}

    @property
    def pending_callbacks(self) -> int:
        """Callback batches not posted yet."""
        return len(self._deliveries)

    def begin(self, message: Message, outcome: Outcome) -> None:
        """Starts moving a just-created message towards `outcome`."""
        task = asyncio.get_running_loop().create_task(self._run(message, outcome))
        self._running[message.sid] = task
        _forget_when_done(self._running, message.sid, task)

    def cancel(self, sid: str) -> None:
        """Stops moving a message on (it was canceled or deleted)."""
        task = self._running.pop(sid, None)
        if task is not None:
            task.cancel()

    def announce(self, message: Message) -> None:
        """Posts a status callback for the message's current status."""
        self._queue_callbacks(message, [self._callback_params(message)])

    async def stop_all(self, grace: float = 0.0) -> None:
        """Stops every lifecycle; lets callbacks in flight finish within `grace` seconds and cancels the rest."""
        await _cancel(self._running.values())
        self._running.clear()
        still = set(self._deliveries)
        if grace > 0 and still:
            _, still = await asyncio.wait(still, timeout=grace)
        await _cancel(still)
        self._callback_tail.clear()

    async def _run(self, message: Message, outcome: Outcome) -> None:
        path = ["queued"] if message.status == "accepted" else []
        if outcome.status == "failed":
            path += ["sending", "failed"]
        else:
            path += ["sending", "sent", outcome.status]
        held: list[dict[str, str]] = []
        for status in path:
            await asyncio.sleep(self._state.rules.lifecycle_ms.get(message.status, 0) / 1000)
            if message.status in TERMINAL or message.sid not in self._state.messages:
                return
            if message.from_ is None:
                message.from_ = self._state.rules.messaging_service_from
            final = status == path[-1]
            message.set_status(status, outcome.error_code if final and outcome.error_code else None)
            params = self._callback_params(message)
            if self._state.rules.callbacks.order == "in_order":
                self._queue_callbacks(message, [params])
            else:
                held.append(params)
        if held:
            if self._state.rules.callbacks.order == "reverse":
                held.reverse()
            else:
                self._state.random.shuffle(held)
            self._queue_callbacks(message, held)

    def _callback_params(self, message: Message) -> dict[str, str]:
        params = {
            "AccountSid": message.account_sid,
            "ApiVersion": API_VERSION,
            "MessageSid": message.sid,
            "SmsSid": message.sid,
            "MessageStatus": message.status,
            "SmsStatus": message.status,
            "To": message.to,
        }
        if message.from_:
            params["From"] = message.from_
        if message.messaging_service_sid:
            params["MessagingServiceSid"] = message.messaging_service_sid
        if message.status in ("failed", "undelivered") and message.error_code is not None:
            params["ErrorCode"] = str(message.error_code)
        if message.status in ("delivered", "undelivered"):
            params["RawDlrDoneDate"] = raw_dlr_done_date(message.date_updated)
        return params

    def _queue_callbacks(self, message: Message, batch: list[dict[str, str]]) -> None:
        url = message.status_callback
        if not url:
            return
        callbacks = self._state.rules.callbacks
        semaphore = self._state.semaphore
        previous = self._callback_tail.get(message.sid)

        async def post_all() -> None:
            # One message's callbacks go out one after another, so a chosen order is the order seen.
            if previous is not None:
                await asyncio.wait([previous])
            for params in batch:
                token = new_idempotency_token()
                for copy in range(1, callbacks.copies + 1):
                    result = await self._poster.deliver(
                        "status", message.sid, url, params, token, semaphore, callbacks.retry_backoff_ms, copy
                    )
                    ok = result.status is not None and 200 <= result.status < 300
                    self._state.counters["callbacks_delivered" if ok else "callbacks_failed"] += 1

        task = self._spawn_delivery(post_all())
        self._callback_tail[message.sid] = task
        _forget_when_done(self._callback_tail, message.sid, task)

    def _spawn_delivery(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return task


def _forget_when_done(tasks: dict[str, asyncio.Task[None]], sid: str, task: asyncio.Task[None]) -> None:
    """Drops `task` from `tasks` once it ends, unless a newer task took its place meanwhile."""

    def forget(done: asyncio.Task[None]) -> None:
        if tasks.get(sid) is done:
            del tasks[sid]

    task.add_done_callback(forget)


async def _cancel(tasks: Iterable[asyncio.Task[None]]) -> None:
    pending = list(tasks)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
