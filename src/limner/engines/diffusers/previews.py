"""Partial-image previews for the diffusers engine: when to show them and how to draw them cheaply.

A preview is drawn from the latents the pipeline hands to `callback_on_step_end`, which are the noisy
latents after a step (not the model's clean estimate), so early previews look noisy, as they should.

Three decoders:

* **linear** (the default for 4-channel latents): a fixed 4x3 projection from latent channels to RGB,
  fitted by the community on Stable Diffusion's VAE (the numbers ComfyUI and A1111 use), then a
  bilinear upscale to the output size. Costs one tiny matmul, so it adds nothing measurable to a step.
  It is an approximation: colours and layout are right for SD 1.x/2.x/XL, meaningless for a model
  with a different VAE (the tiny random test models included), but always a picture of the right size.
* **vae**: the model's own VAE decode of the current latents. Exact for the noisy state, costs about
  as much as the final decode, per preview.
* **fitted** (the default where no projection is built in: every family but SD and SDXL): a linear
  map fitted at load on the model's own VAE, in the callback's layout (fitted_preview.py). A small
  matrix product per preview.

The transformer families hand over packed latents, which are unpacked first, as each pipeline does
before its final decode: FLUX.1 and Qwen-Image pack 2x2 patches into a (batch, sequence, channels)
sequence, FLUX.2 packs patchified latents row by row and normalises them with its VAE's batch-norm
statistics, and Qwen-Image's VAE is a video VAE (one frame) with its own mean and deviation. They get
the fitted preview, or with `preview = "vae"` an exact decode.

torch is imported by the functions that need it, never at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from PIL import Image

if TYPE_CHECKING:
    from limner.engines.diffusers.fitted_preview import PreviewFit

PreviewMode = Literal["auto", "linear", "vae", "fitted"]
#: How a family's callback latents are laid out (limner.engines.diffusers.families).
Layout = Literal["spatial", "flux", "qwen", "flux2"]

# Latent channel -> (R, G, B) factors and an RGB bias, as used by ComfyUI's latent previewer.
_SD1_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
_SD1_BIAS = (0.0, 0.0, 0.0)
_SDXL_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)


def preview_steps(total_steps: int, count: int) -> list[int]:
    """The step indices (0-based, as `callback_on_step_end` numbers them) after which to show a preview.

    Previews are spread evenly over every step but the last (the last one gives the final image), so
    with 4 steps and 3 previews they come after steps 0, 1 and 2; with fewer steps than previews
    asked for, one preview per step and no more.
    """
    candidates = total_steps - 1
    if count <= 0 or candidates <= 0:
        return []
    if count >= candidates:
        return list(range(candidates))
    # (k + 1) * candidates / (count + 1) is strictly increasing by >= 1 and stays below `candidates`.
    return [(k + 1) * candidates // (count + 1) for k in range(count)]


class PreviewDecoder:
    """Turns a batch of latents into PIL previews of the output size, or None when it cannot."""

    def __init__(
        self,
        pipe: Any,
        mode: PreviewMode,
        width: int,
        height: int,
        layout: Layout = "spatial",
        fit: PreviewFit | None = None,
    ) -> None:
        self._pipe = pipe
        self._fit = fit
        self._size = (width, height)
        self._layout = layout
        is_xl = "XL" in type(pipe).__name__
        self._factors, self._bias = (_SDXL_FACTORS, _SDXL_BIAS) if is_xl else (_SD1_FACTORS, _SD1_BIAS)
        self._mode = mode

    def decode(self, latents: Any) -> list[Image.Image] | None:
        mode = self._mode
        spatial = self._layout == "spatial"
        if mode == "auto":
            # SD's and SDXL's community projection where it exists, else the model's own fitted map.
            linear = (
                spatial and getattr(latents, "ndim", 0) == 4 and int(latents.shape[1]) == len(self._factors)
            )
            mode = "linear" if linear else "fitted" if self._fit is not None else "vae"
        if mode == "fitted" and self._fit is not None:
            return self._fit.draw(latents, *self._size)
        if not spatial:
            return self._packed(latents)
        if getattr(latents, "ndim", 0) != 4:
            return None  # a layout this module does not know: fewer partial images, never a wrong one
        channels = int(latents.shape[1])
        if mode == "linear" and channels == len(self._factors):
            return self._linear(latents)
        if getattr(self._pipe, "vae", None) is None:
            return None
        return self._vae(latents)

    def _linear(self, latents: Any) -> list[Image.Image]:
        import torch

        with torch.no_grad():
            factors = torch.tensor(self._factors, dtype=torch.float32, device=latents.device)
            bias = torch.tensor(self._bias, dtype=torch.float32, device=latents.device)
            rgb = torch.einsum("bchw,cr->bhwr", latents.float(), factors) + bias
            # The projection lands roughly in [-1, 1], as the VAE's output does.
            pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
        return [_picture(p, self._size) for p in pixels]

    def _vae(self, latents: Any) -> list[Image.Image]:
        import torch

        vae = self._pipe.vae
        scaling = getattr(vae.config, "scaling_factor", 1.0) or 1.0
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        with torch.no_grad():
            decoded = vae.decode(latents.to(vae.dtype) / scaling + shift, return_dict=False)[0]
            pixels = ((decoded.float() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
            pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
        return [_picture(p, self._size) for p in pixels]

    def _packed(self, latents: Any) -> list[Image.Image] | None:
        """Unpack a transformer family's latents as its pipeline does before the final decode."""
        import torch

        pipe, (width, height) = self._pipe, self._size
        vae = getattr(pipe, "vae", None)
        if vae is None or getattr(latents, "ndim", 0) != 3:
            return None
        factor = int(pipe.vae_scale_factor)
        with torch.no_grad():
            if self._layout == "flux":
                spatial = pipe._unpack_latents(latents, height, width, factor)
                scaling = vae.config.scaling_factor
                spatial = spatial.to(vae.dtype) / scaling + (vae.config.shift_factor or 0.0)
                decoded = vae.decode(spatial, return_dict=False)[0]
            elif self._layout == "qwen":
                spatial = pipe._unpack_latents(latents, height, width, factor).to(vae.dtype)
                shape = (1, vae.config.z_dim, 1, 1, 1)
                mean = torch.tensor(vae.config.latents_mean).view(shape).to(spatial.device, spatial.dtype)
                std = torch.tensor(vae.config.latents_std).view(shape).to(spatial.device, spatial.dtype)
                decoded = vae.decode(spatial * std + mean, return_dict=False)[0][:, :, 0]
            else:  # flux2: patchified latents in row-major order, batch-norm normalised
                rows, cols = height // (factor * 2), width // (factor * 2)
                batch, _, channels = latents.shape
                spatial = latents.permute(0, 2, 1).reshape(batch, channels, rows, cols)
                bn = vae.bn
                mean = bn.running_mean.view(1, -1, 1, 1).to(spatial.device, spatial.dtype)
                std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
                spatial = pipe._unpatchify_latents(spatial * std.to(spatial.device, spatial.dtype) + mean)
                decoded = vae.decode(spatial.to(vae.dtype), return_dict=False)[0]
            pixels = ((decoded.float() + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
            pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
        return [_picture(p, self._size) for p in pixels]


def _picture(pixels: Any, size: tuple[int, int]) -> Image.Image:
    """Decoded pixels (height, width, 3 or 4) as a preview of the output size; four channels are an
    RGBA VAE's real alpha (Qwen-Image 2.1)."""
    mode = "RGBA" if pixels.shape[-1] == 4 else "RGB"
    return Image.fromarray(pixels, mode).resize(size, Image.Resampling.BILINEAR)
