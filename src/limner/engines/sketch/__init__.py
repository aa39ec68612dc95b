"""The sketch engine: limner's built-in procedural stand-in (no weights, deterministic, fast).

engine.py is the Engine seam; the rest, one concern each: words.py (how a prompt is read), palette.py
(colours), scene.py (what is drawn and where, at any resolution), draw.py (signed-distance drawing),
inputs.py (edits and variations from input images).
"""

from limner.engines.sketch.engine import SketchEngine, preview_sizes

__all__ = ["SketchEngine", "preview_sizes"]
