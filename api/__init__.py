"""The REST API: FastAPI app, routes, auth."""
