"""Response builders shared by the endpoints: the assistant message of a finished reply, and SSE framing.

``reply_message`` turns a generation result into OpenAI's message (a tool call when tools were offered and the
template reads the reply as one); ``sse`` frames one payload as a server-sent event. Neither knows about queues.
"""

from __future__ import annotations

import json
from typing import Any

from glmtune.infer.serve import protocol as p
from glmtune.infer.serve.registry import ServedModel


def reply_message(model: ServedModel, result: Any, use_tools: bool) -> tuple[p.ResponseMessage, str]:
    """The assistant message of a reply: a tool call (``finish_reason: tool_calls``) when tools were offered and
    the template reads the reply as one, else the text."""
    if use_tools:
        parsed = model.parse_reply(result.text)
        if "name" in parsed and "parameters" in parsed:
            arguments = json.dumps(parsed["parameters"], ensure_ascii=False)
            call = p.ResponseToolCall(
                id=p.new_id("call"), function={"name": parsed["name"], "arguments": arguments}
            )
            return p.ResponseMessage(content=None, tool_calls=[call]), "tool_calls"
        return p.ResponseMessage(content=parsed.get("content", result.text)), result.finish_reason
    return p.ResponseMessage(content=model.reply_text(result.text)), result.finish_reason


def sse(payload: Any) -> str:
    """One payload (a pydantic model or plain JSON) as a server-sent event."""
    data = (
        payload.model_dump_json(exclude_none=False)
        if hasattr(payload, "model_dump_json")
        else json.dumps(payload)
    )
    return f"data: {data}\n\n"


__all__ = ["reply_message", "sse"]
