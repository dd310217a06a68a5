"""The HTTP layer (Starlette): REST API, SSE, dashboard."""
