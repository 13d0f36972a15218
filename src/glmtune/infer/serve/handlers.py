"""The endpoints' work, below HTTP routing: check a request, encode it, queue it as a scheduler job, wait, answer.

``Handlers(served, limits, scheduler)`` has one coroutine per endpoint (``chat``, ``complete``, ``classify``). A bad
request raises ``APIError`` (4xx, OpenAI's error object); a full queue 429; past ``limits.timeout_s`` 408; a client
that leaves gets its job cancelled (499 when there is still someone to answer). Streams are SSE generators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from glmtune.core.errors import UserError
from glmtune.infer.serve import protocol as p
from glmtune.infer.serve.batch import RowRequest
from glmtune.infer.serve.guard import APIError
from glmtune.infer.serve.limits import Limits
from glmtune.infer.serve.monitor import record_of
from glmtune.infer.serve.registry import ServedModel
from glmtune.infer.serve.replies import reply_message, sse
from glmtune.infer.serve.scheduler import Job, QueueFull, Scheduler

log = logging.getLogger("glmtune.serve")


class _ClientGone(Exception):
    """The client disconnected while its job was queued or running: nobody is left to answer."""


class Handlers:
    """The endpoints' work: check the request, encode it, queue it, wait, answer."""

    def __init__(self, served: dict[str, ServedModel], limits: Limits, scheduler: Scheduler):
        self.served, self.limits, self.scheduler = served, limits, scheduler

    # ---- choosing and checking
    def pick(self, name: str | None, task: str) -> ServedModel:
        if name is None:
            model = next((m for m in self.served.values() if m.task == task), None)
            if model is None:
                raise APIError(400, f"no {task} model is served", param="model", code="model_not_found")
            return model
        model = self.served.get(name)
        if model is None:
            known = ", ".join(self.served)
            raise APIError(404, f"The model '{name}' does not exist (served: {known})", param="model",
                           code="model_not_found")  # fmt: skip
        if model.task != task:
            hint = "use /v1/classify" if model.task == "classification" else "use /v1/chat/completions"
            raise APIError(400, f"model '{name}' is a {model.task} model: {hint}", param="model")
        return model

    def max_tokens(self, requested: int | None, model: ServedModel, prompt_tokens: int) -> int:
        ceiling = self.limits.max_tokens
        if requested is not None and requested > ceiling:
            raise APIError(400, f"max_tokens is {requested}; this server allows at most {ceiling}",
                           param="max_tokens", code="max_tokens_too_large")  # fmt: skip
        tokens = requested if requested is not None else min(model.lm.cfg.generate.max_new_tokens, ceiling)
        if prompt_tokens + tokens > model.window:
            raise APIError(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({tokens}) exceeds the model's "
                           f"context window of {model.window} tokens", param="messages",
                           code="context_length_exceeded")  # fmt: skip
        return tokens

    def row(self, model: ServedModel, body: p._Sampling, ids: list[int], max_tokens: int) -> RowRequest:
        """The request's sampling; what it leaves out comes from the run's ``generate:`` settings."""
        settings = model.lm.cfg.generate
        if body.temperature is None:
            temperature = settings.temperature if settings.do_sample else 0.0
        else:
            temperature = body.temperature
        return RowRequest(
            prompt_ids=ids,
            max_new_tokens=max_tokens,
            temperature=temperature,
            top_p=body.top_p if body.top_p is not None else settings.top_p,
            top_k=settings.top_k,
            seed=body.seed if body.seed is not None else settings.seed,
            stop=body.stop_list(),
        )

    def submit(self, model: ServedModel, payload: Any, *, stream: bool = False) -> Job:
        job = Job(model.name, payload, asyncio.get_running_loop(), wants_text=stream)
        try:
            self.scheduler.submit(job)
        except QueueFull as error:
            raise APIError(
                429, f"server busy: {error}; retry later", "rate_limit_error", code="queue_full"
            ) from None
        return job

    async def _wait(self, job: Job, request: Request) -> AsyncIterator[Any]:
        """The job's events as they come, until its result or error. Raises ``_ClientGone`` when the client has
        left and the 408 ``APIError`` past the deadline (checked twice a second while nothing comes); a job left
        unfinished is cancelled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.timeout_s
        try:
            while True:
                try:
                    event = await asyncio.wait_for(
                        job.events.get(), timeout=max(0.0, min(0.5, deadline - loop.time()))
                    )
                except TimeoutError:
                    if await request.is_disconnected():
                        raise _ClientGone() from None
                    if loop.time() >= deadline:
                        raise self._timeout() from None
                    continue
                yield event
                if event.kind in ("done", "error"):
                    return
        finally:
            if not job.finished:
                job.cancel()

    async def result(self, job: Job, request: Request) -> Any:
        """The job's result; its error (this request's alone: the batch engine keeps the others going) is logged
        and raised as a 500 ``APIError``."""
        try:
            async with contextlib.aclosing(self._wait(job, request)) as events:
                async for event in events:
                    if event.kind == "error":
                        log.error("generation failed", exc_info=event.value)
                        message = "the model failed on this request (the server's log has the details)"
                        raise APIError(
                            500, message, "server_error", code="generation_failed"
                        ) from event.value
                    if event.kind == "done":
                        return event.value
        finally:
            record_of(request).add_jobs([job])
        raise RuntimeError("a job ended without a result")

    def _timeout(self) -> APIError:
        return APIError(408, f"the request took longer than the server's limit of {self.limits.timeout_s:g} s",
                        "timeout_error", code="timeout")  # fmt: skip

    # ---- chat
    async def chat(self, body: p.ChatCompletionRequest, request: Request) -> Any:
        model = self.pick(body.model, "sft")
        record = record_of(request)
        record.model, record.stream = model.name, body.stream
        record.prompt = [{"role": m.role, "content": m.text()} for m in body.messages]
        if len(body.messages) > self.limits.max_messages:
            raise APIError(400, f"{len(body.messages)} messages; this server allows at most "
                           f"{self.limits.max_messages}", param="messages", code="too_many_messages")  # fmt: skip
        tools = (
            [tool.model_dump(exclude_none=True) for tool in body.tools or []]
            if body.tool_choice != "none"
            else []
        )
        ids = await run_in_threadpool(_encode_chat, model, body, tools or None)
        record.prompt_tokens = len(ids)
        row = self.row(model, body, ids, self.max_tokens(body.token_limit(), model, len(ids)))
        use_tools = bool(tools) and model.supports_tools
        job = self.submit(model, row, stream=body.stream)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = self._chat_stream(job, request, model, len(ids), include_usage, use_tools)
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            result = await self.result(job, request)
        except _ClientGone:
            return Response(status_code=499)
        message, finish_reason = reply_message(model, result, use_tools)
        record.completion_tokens, record.reply = len(result.token_ids), _content(message)
        choice = p.ChatChoice(message=message, finish_reason=finish_reason)
        return p.ChatCompletion(id=p.new_id("chatcmpl"), created=p.now(), model=model.name, choices=[choice],
                                usage=p.usage(len(ids), len(result.token_ids)))  # fmt: skip

    async def _chat_stream(
        self,
        job: Job,
        request: Request,
        model: ServedModel,
        prompt_tokens: int,
        include_usage: bool,
        use_tools: bool,
    ) -> AsyncIterator[str]:
        ident, created = p.new_id("chatcmpl"), p.now()

        def chunk(delta: p.ChunkDelta, finish_reason: str | None = None) -> str:
            choice = p.ChunkChoice(delta=delta, finish_reason=finish_reason)
            return sse(p.ChatCompletionChunk(id=ident, created=created, model=model.name, choices=[choice]))

        yield chunk(p.ChunkDelta(role="assistant", content=""))
        raw = shown = ""
        async for kind, value in self._events(job, request):
            # With tools the reply may turn out to be a call: it is sent whole at the end.
            if kind == "text" and not use_tools:
                # The same text as the non-streamed reply: the text so far, read as a reply, minus what was sent.
                raw += value
                text = model.reply_text(raw)
                if text.startswith(shown) and len(text) > len(shown):
                    yield chunk(p.ChunkDelta(content=text[len(shown) :]))
                    shown = text
            elif kind == "error":
                yield value
                return
            elif kind == "done":
                message, finish_reason = reply_message(model, value, use_tools)
                record = record_of(request)
                record.completion_tokens, record.reply = len(value.token_ids), _content(message)
                if message.tool_calls:
                    calls = [{"index": i, **call.model_dump()} for i, call in enumerate(message.tool_calls)]
                    yield chunk(p.ChunkDelta(tool_calls=calls))
                elif message.content and len(message.content) > len(shown):
                    yield chunk(p.ChunkDelta(content=message.content[len(shown) :]))
                yield chunk(p.ChunkDelta(), finish_reason)
                if include_usage:
                    last = p.ChatCompletionChunk(id=ident, created=created, model=model.name, choices=[],
                                                 usage=p.usage(prompt_tokens, len(value.token_ids)))  # fmt: skip
                    yield sse(last)
                yield "data: [DONE]\n\n"

    async def _events(self, job: Job, request: Request) -> AsyncIterator[tuple[str, Any]]:
        """A streaming job's events until its result; an error or the timeout becomes an SSE error event. A client
        that leaves cancels the job: noticed when a chunk cannot be sent (Starlette closes this generator) or,
        while nothing is sent (queued, or tools held back), by asking the connection."""
        try:
            async with contextlib.aclosing(self._wait(job, request)) as events:
                async for event in events:
                    if event.kind == "error":
                        log.error("generation failed", exc_info=event.value)
                        record_of(request).stream_error(500, "generation_failed")
                        yield "error", sse(p.error_body("generation failed", "server_error"))
                        return
                    yield event.kind, event.value
        except _ClientGone:
            return
        except APIError as error:
            record_of(request).stream_error(error.status, error.body["error"]["code"])
            yield "error", sse(error.body)
        finally:
            record_of(request).add_jobs([job])

    # ---- completions
    async def complete(self, body: p.CompletionRequest, request: Request) -> Any:
        model = self.pick(body.model, "sft")
        prompts = body.prompts()
        record = record_of(request)
        record.model, record.stream, record.prompt = model.name, body.stream, prompts
        if len(prompts) > self.limits.max_inputs:
            raise APIError(400, f"{len(prompts)} prompts; this server allows at most {self.limits.max_inputs}",
                           param="prompt")  # fmt: skip
        if body.stream and len(prompts) > 1:
            raise APIError(400, "streaming takes one prompt", param="prompt")
        ids = [await run_in_threadpool(model.text_prompt, prompt) for prompt in prompts]
        if any(not row for row in ids):
            raise APIError(400, "an empty prompt (no tokens)", param="prompt")
        record.prompt_tokens = sum(map(len, ids))
        rows = [self.row(model, body, row, self.max_tokens(body.max_tokens, model, len(row))) for row in ids]
        if body.stream:
            job = self.submit(model, rows[0], stream=True)
            return StreamingResponse(
                self._completion_stream(job, request, model, len(ids[0]), body),
                media_type="text/event-stream",
            )
        jobs: list[Job] = []
        try:
            for row in rows:  # a full queue part way refuses the whole request: the queued part is cancelled
                jobs.append(self.submit(model, row))
            results = await asyncio.gather(*(self.result(job, request) for job in jobs))
        except _ClientGone:
            return Response(status_code=499)
        finally:
            for job in jobs:
                if not job.finished:
                    job.cancel()
        choices = [
            p.CompletionChoice(index=i, text=r.text, finish_reason=r.finish_reason)
            for i, r in enumerate(results)
        ]
        used = p.usage(sum(map(len, ids)), sum(len(r.token_ids) for r in results))
        record.completion_tokens, record.reply = used.completion_tokens, [r.text for r in results]
        return p.Completion(
            id=p.new_id("cmpl"), created=p.now(), model=model.name, choices=choices, usage=used
        )

    async def _completion_stream(
        self, job: Job, request: Request, model: ServedModel, prompt_tokens: int, body: Any
    ) -> AsyncIterator[str]:
        ident, created = p.new_id("cmpl"), p.now()

        def chunk(text: str, finish_reason: str | None = None, usage: Any = None) -> str:
            choices = [] if usage else [p.CompletionChoice(text=text, finish_reason=finish_reason)]
            return sse(
                p.Completion(id=ident, created=created, model=model.name, choices=choices, usage=usage)
            )

        async for kind, value in self._events(job, request):
            if kind == "text":
                yield chunk(value)
            elif kind == "error":
                yield value
                return
            elif kind == "done":
                record = record_of(request)
                record.completion_tokens, record.reply = len(value.token_ids), value.text
                yield chunk("", value.finish_reason)
                if body.stream_options and body.stream_options.include_usage:
                    yield chunk("", usage=p.usage(prompt_tokens, len(value.token_ids)))
                yield "data: [DONE]\n\n"

    # ---- classify (glmtune's extension)
    async def classify(self, body: p.ClassifyRequest, request: Request) -> p.ClassifyResponse:
        from glmtune.infer.classifier import prediction

        model = self.pick(body.model, "classification")
        texts = body.texts()
        record = record_of(request)
        record.model, record.inputs, record.prompt = model.name, len(texts), texts
        if len(texts) > self.limits.max_inputs:
            raise APIError(400, f"{len(texts)} texts; this server allows at most {self.limits.max_inputs}",
                           param="input")  # fmt: skip
        try:
            probs = await self.result(self.submit(model, texts), request)
        except _ClientGone:
            return Response(status_code=499)  # type: ignore[return-value]
        labels = model.classifier.labels
        data = [p.Classification(index=i, **prediction(row, labels)) for i, row in enumerate(probs)]
        record.reply = [item.label for item in data]
        return p.ClassifyResponse(model=model.name, data=data, usage={"inputs": len(texts)})


def _content(message: p.ResponseMessage) -> Any:
    """A reply's content for the access log (``--log-content``): its text, or its tool calls."""
    if message.tool_calls:
        return [call.model_dump() for call in message.tool_calls]
    return message.content


def _encode_chat(model: ServedModel, body: p.ChatCompletionRequest, tools: list[dict] | None) -> list[int]:
    """The request's conversation, checked by the same reader as training data, as prompt ids (400 if bad)."""
    from glmtune.data.conversation import conversations_from_records

    messages = []
    for message in body.messages:
        item: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role}
        item["content"] = message.text()
        if message.tool_calls:
            item["tool_calls"] = [call.model_dump(exclude_none=True) for call in message.tool_calls]
        messages.append(item)
    try:
        record = {"messages": messages, "tools": tools}
        conversation = conversations_from_records([record], "request", "messages", require_reply=False)[0]
        return model.chat_prompt(conversation.messages, conversation.tools)
    except UserError as error:
        message = str(error).removeprefix("request: ")
        # The template's refusals name the server's setting; for the client it is its tools or messages.
        param = error.field if error.field != "template" else "tools" if tools else "messages"
        raise APIError(400, message, param=param) from None


__all__ = ["Handlers"]
