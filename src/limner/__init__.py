"""limner: a self-hosted implementation of the OpenAI Images API."""

__version__ = "0.1.0"
