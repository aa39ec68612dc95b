"""What clients generated from the published spec send: every `default:` of the spec filled in."""

from __future__ import annotations

from typing import Any

#: `CreateImageRequest.new({prompt: 'A cute baby sea otter'})` in the Ruby seed, as sent.
RUBY_CREATE_IMAGE: dict[str, Any] = {
    "prompt": "A cute baby sea otter",
    "background": "auto",
    "moderation": "auto",
    "n": 1,
    "output_compression": 100,
    "output_format": "png",
    "partial_images": 0,
    "quality": "auto",
    "response_format": "url",
    "size": "auto",
    "stream": False,
    "style": "vivid",
}
