"""Server-sent events, built in one place: a stream, a job's /events and a replayed answer all send
an event name with one shape.

A completed event is `{type, b64_json, created_at, size, quality, background, output_format, usage}`:
everything but the image (its "fields") is kept with a durable job's result, and the event is made
again from those fields and the image when it is replayed.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace
from typing import Any

from limner import rules


def sse(event: str, payload: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _echo(resolved: rules.Resolved) -> dict[str, Any]:
    # Stream events echo the *requested* settings (docs/images-contract.md, section 5b), so `auto` may appear.
    return {
        "created_at": int(time.time()),
        "size": resolved.requested_size,
        "quality": resolved.requested_quality,
        "background": resolved.requested_background,
        "output_format": resolved.output_format,
    }


def partial_event(kind: str, resolved: rules.Resolved, partial_index: int, data: bytes) -> bytes:
    payload = {
        "type": f"{kind}.partial_image",
        "b64_json": b64(data),
        **_echo(resolved),
        "partial_image_index": partial_index,
    }
    return sse(f"{kind}.partial_image", payload)


def completed_fields(
    kind: str, resolved: rules.Resolved, input_sizes: list[tuple[int, int]]
) -> dict[str, Any]:
    """A completed event's fields but its image (usage counts that one image)."""
    usage = rules.usage_for(replace(resolved, n=1), input_sizes=input_sizes)
    usage.pop("output_tokens_details", None)
    return {"type": f"{kind}.completed", **_echo(resolved), "usage": usage}


def completed_event(fields: dict[str, Any], image: dict[str, str]) -> bytes:
    """The completed event from its fields and its image (`{"b64_json": ...}`, or `{"url": ...}` when
    a url-mode job's image can no longer be read)."""
    return sse(str(fields["type"]), {"type": fields["type"], **image, **fields})
