"""The HTTP server: FastAPI app, routes, errors, auth. Only `limner serve` imports this package."""
