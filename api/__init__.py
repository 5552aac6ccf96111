"""The HTTP API (FastAPI): the app, its request and answer models, and token authentication."""
