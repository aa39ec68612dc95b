"""How to install an optional part of limner, said the same way in every message.

limner is installed from its repository (it is not on PyPI), so the command is an editable install of
the clone with the extra named: `pip install -e '.[diffusers]'`, run in limner's folder with the
environment's pip (`.venv/bin/pip` for the one `scripts/dev.py` makes).
"""

from __future__ import annotations

#: The extras of pyproject.toml and what each brings (the README's table says the same).
EXTRAS = {
    "diffusers": "torch, diffusers, transformers, accelerate: Hugging Face diffusers models",
    "quantize": "torchao: int8 and float8 weights for a diffusers model (quantize = ...)",
    "postgres": "psycopg: keys and jobs in PostgreSQL, shared by replicas",
    "s3": "boto3: url-mode images in an S3-compatible bucket",
    "ray": "Ray Serve: replicas on one machine or a cluster",
    "test": "pytest, the openai package and the other tools the test suite uses",
}


def install_hint(*extras: str) -> str:
    """The command that installs these extras into the environment limner runs in."""
    names = ",".join(extras)
    return f"pip install -e '.[{names}]' in limner's folder"
