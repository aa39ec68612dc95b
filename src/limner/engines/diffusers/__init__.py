"""The diffusers engine: any diffusers text-to-image model of today's families, one engine per model.

engine.py is the Engine seam (create_engine, DiffusersEngine); its parts: loading.py (the extra's
imports, device and dtype, the pipelines), capabilities.py (what the model can do, the up-front
checks), calls.py (planning jobs and running pipeline calls), families.py (the one family table),
options.py (the model table's options), previews.py (partial images from latents).
torch and diffusers are imported only when a model is loaded or created.
"""

from limner.engines.diffusers.engine import DiffusersEngine, create_engine
from limner.engines.diffusers.loading import EXTRA_HINT
from limner.engines.diffusers.options import DiffusersOptions, parse_options

__all__ = ["EXTRA_HINT", "DiffusersEngine", "DiffusersOptions", "create_engine", "parse_options"]
