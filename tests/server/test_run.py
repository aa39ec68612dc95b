"""The run path owns the masked-edit guarantee: whatever an engine draws, the finals and previews of a
masked edit keep every pixel outside the mask exactly as sent (one owner: limner.server.serving.run)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from limner.engines.base import EngineBase, EngineInfo
from limner.engines.jobs import Job, JobContext
from limner.server.settings import Settings
from tests.support.inprocess import app_client


class PaintsEverything(EngineBase):
    """Fills every pixel, previews included: an engine that keeps nothing of its input."""

    @property
    def info(self) -> EngineInfo:
        return EngineInfo("paints-everything", size_multiple=8)

    @property
    def loaded(self) -> bool:
        return True

    def load(self) -> None:
        """Nothing to load."""

    def run_batch(self, jobs: Sequence[Job], contexts: Sequence[JobContext]) -> list[list[Image.Image]]:
        out = []
        for job, ctx in zip(jobs, contexts, strict=True):
            for index in range(ctx.partial_images):
                ctx.report_partial(0, index, Image.new("RGB", (job.width // 2, job.height // 2), (255, 0, 0)))
            out.append([Image.new("RGB", (job.width, job.height), (0, 255, 0)) for _ in range(job.n)])
        return out


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_finals_and_previews_keep_what_is_outside_the_mask(tmp_path: Path) -> None:
    source = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (32, 0, 64, 64))  # the right half is to be redrawn
    async with app_client(Settings(data_dir=tmp_path), engines={"m": PaintsEverything()}) as client:
        answer = await client.post(
            "/v1/images/edits",
            data={"model": "m", "prompt": "x", "size": "64x64", "stream": "true", "partial_images": "2"},
            files={"image": ("a.png", png(source)), "mask": ("m.png", png(mask))},
        )
    images = [
        Image.open(io.BytesIO(base64.b64decode(json.loads(line[6:])["b64_json"]))).convert("RGB")
        for line in answer.text.splitlines()
        if line.startswith("data: ")
    ]
    assert len(images) == 3  # two previews and the final
    kept = np.asarray(source)[:, :32]
    for image in images:
        drawn = np.asarray(image.resize((64, 64)) if image.size != (64, 64) else image)
        assert (drawn[:, 32:] != np.asarray(source)[:, 32:]).any()  # the engine's paint, inside
    final = np.asarray(images[-1])
    assert np.array_equal(final[:, :32], kept)  # outside the mask: the upload, bit for bit
    assert (final[:, 32:] == (0, 255, 0)).all()
