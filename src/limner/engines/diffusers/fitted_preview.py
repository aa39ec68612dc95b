"""`preview = "fitted"`: a linear latent-to-RGB map with a bias, fitted at load on the model's own VAE,
in the latent layout the step callback sees, so that a partial image costs one small matrix product
instead of a VAE decode, for every family.

    fit = fit_preview(pipe, "flux")   # at load: encode synthetic images, least squares
    fit.draw(latents, 1024, 1024)     # per preview: (batch, tokens, C) @ (C + 1, 3)

The fit: a few synthetic images (colour fields, gradients, smooth noise, stripes) are encoded with the
model's VAE and put in the callback's layout (scaled and shifted, packed in 2x2 patches for FLUX.1 and
Qwen-Image, patchified and batch-norm normalised for FLUX.2), then decoded back the way the exact VAE
preview decodes; each latent position (or packed token) is paired with the mean colour of the decoded
pixels it covers, and `torch.linalg.lstsq` gives the map. A preview is
then an image at the latent grid's resolution, scaled up to the output size. It is an approximation,
as ComfyUI's hand-fitted factors are for SD: right colours and layout, no fine detail.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from PIL import Image


def _module(name: str) -> Any:
    """torch, imported when a fit runs (this module is imported by the previews, before the extra
    is known to be installed)."""
    return importlib.import_module(name)


#: Side of the synthetic images (a multiple of every family's 16 or 32 pixel latent cell).
FIT_SIDE = 128


def _synthetic(torch: Any, count: int = 12) -> Any:
    """Images in [-1, 1], (count, 3, side, side): smooth random fields, gradients, flat colours,
    stripes. Seeded: a model gets the same fit every load."""
    generator = torch.Generator().manual_seed(0)
    side = FIT_SIDE
    images = []
    ramp = torch.linspace(-1, 1, side)
    for index in range(count):
        kind = index % 4
        if kind == 0:  # smooth colour field: coarse noise scaled up
            coarse = torch.rand(1, 3, 4, 4, generator=generator) * 2 - 1
            image = torch.nn.functional.interpolate(
                coarse, size=(side, side), mode="bicubic", align_corners=False
            )[0]
        elif kind == 1:  # two-colour gradient
            a, b = (torch.rand(3, 1, 1, generator=generator) * 2 - 1 for _ in range(2))
            t = (ramp.view(1, 1, side) + 1) / 2 if index % 8 < 4 else (ramp.view(1, side, 1) + 1) / 2
            image = a * (1 - t) + b * t
        elif kind == 2:  # flat colour
            image = (torch.rand(3, 1, 1, generator=generator) * 2 - 1).expand(3, side, side)
        else:  # stripes of two colours
            a, b = (torch.rand(3, 1, 1, generator=generator) * 2 - 1 for _ in range(2))
            mask = ((torch.arange(side) // (8 * (1 + index % 3))) % 2).view(1, 1, side).float()
            image = a * mask + b * (1 - mask)
        images.append(image.clamp(-1, 1).expand(3, side, side))
    return torch.stack(images)


def _encode(vae: Any, images: Any, layout: str) -> Any:
    torch = _module("torch")
    with torch.no_grad():
        pixels = images.to(vae.device, vae.dtype)
        if layout == "qwen":
            pixels = pixels.unsqueeze(2)  # a video VAE: one frame
        out = vae.encode(pixels)
        if hasattr(out, "latent_dist"):
            return out.latent_dist.mode().float()
        return out.latent.float()


def to_callback_layout(pipe: Any, latents: Any, layout: str) -> Any:
    """VAE latents as the step callback sees them (the inverse of previews.PreviewDecoder's unpacking):
    (batch, C, h, w) for spatial layouts, (batch, tokens, C) for packed ones."""
    torch = _module("torch")
    vae = pipe.vae
    config = vae.config
    if layout == "qwen":
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean).view(shape).to(latents)
        std = torch.tensor(config.latents_std).view(shape).to(latents)
        normal = ((latents - mean) / std)[:, :, 0]
        batch, channels, height, width = normal.shape
        return pipe._pack_latents(normal, batch, channels, height, width)
    if layout == "flux2":
        patched = pipe._patchify_latents(latents)
        bn = vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(patched)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + config.batch_norm_eps).to(patched)
        normal = (patched - mean) / std
        batch, channels, rows, cols = normal.shape
        return normal.reshape(batch, channels, rows * cols).permute(0, 2, 1)
    scaled = (latents - (getattr(config, "shift_factor", None) or 0.0)) * (
        getattr(config, "scaling_factor", 1.0) or 1.0
    )
    if layout == "flux":
        batch, channels, height, width = scaled.shape
        return pipe._pack_latents(scaled, batch, channels, height, width)
    return scaled


def _grid(latents: Any, layout: str, height: int, width: int, factor: int) -> tuple[int, int]:
    """Rows and columns of the callback's latent grid for an image of width x height."""
    if layout == "spatial":
        return int(latents.shape[-2]), int(latents.shape[-1])
    return height // (factor * 2), width // (factor * 2)


@dataclass
class PreviewFit:
    """The fitted map: (C + 1, 3), the last row a bias; and the layout it reads."""

    weights: Any
    layout: str
    factor: int
    #: Root mean square error of the fit on its own images, in [-1, 1] units (for the log and bench).
    error: float

    def draw(self, latents: Any, width: int, height: int) -> list[Image.Image] | None:
        torch = _module("torch")
        rows, cols = _grid(latents, self.layout, height, width, self.factor)
        with torch.no_grad():
            if self.layout == "spatial":
                if latents.ndim != 4:
                    return None
                tokens = latents.flatten(2).transpose(1, 2)
            else:
                if latents.ndim != 3:
                    return None
                tokens = latents
            if tokens.shape[-1] + 1 != self.weights.shape[0] or tokens.shape[1] != rows * cols:
                return None  # not the layout this fit reads: fewer partial images, never a wrong one
            weights = self.weights.to(tokens.device)
            rgb = tokens.float() @ weights[:-1] + weights[-1]
            pixels = (
                ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).reshape(-1, rows, cols, 3).cpu().numpy()
            )
        return [Image.fromarray(p, "RGB").resize((width, height), Image.Resampling.BILINEAR) for p in pixels]


def fit_preview(pipe: Any, layout: str) -> PreviewFit:
    """Fit the map on the pipeline's VAE (seconds on the CPU for a real VAE; the tiny ones: ms)."""
    from limner.engines.diffusers.previews import PreviewDecoder

    torch = _module("torch")
    latents = to_callback_layout(pipe, _encode(pipe.vae, _synthetic(torch), layout), layout)
    # The target is what the VAE preview shows for these latents (decoded the exact way previews
    # are): for a trained VAE close to the images themselves; for the tiny random test VAEs, not.
    decoded = PreviewDecoder(pipe, "vae", FIT_SIDE, FIT_SIDE, layout).decode(latents)  # type: ignore[arg-type]
    if decoded is None:
        raise ValueError(f"the VAE preview cannot decode the {layout} layout")
    import numpy as np

    images = torch.from_numpy(np.stack([np.asarray(i.convert("RGB")) for i in decoded])).permute(0, 3, 1, 2)
    images = images.float() / 127.5 - 1.0
    latents = latents.float().cpu()
    factor = int(pipe.vae_scale_factor)
    rows, cols = _grid(latents, layout, FIT_SIDE, FIT_SIDE, factor)
    tokens = latents.flatten(2).transpose(1, 2) if layout == "spatial" else latents
    # The mean colour of the pixels each latent position (or token) covers.
    targets = torch.nn.functional.adaptive_avg_pool2d(images, (rows, cols)).flatten(2).transpose(1, 2)
    features = tokens.reshape(-1, tokens.shape[-1])
    design = torch.cat([features, torch.ones(features.shape[0], 1)], dim=1)
    wanted = targets.reshape(-1, 3)
    weights = torch.linalg.lstsq(design, wanted, driver="gelsd").solution
    error = float(torch.sqrt(((design @ weights - wanted) ** 2).mean()))
    return PreviewFit(weights, layout, factor, error)
