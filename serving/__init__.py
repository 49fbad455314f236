"""Serving runtime: an MLflow pyfunc model server and a canary router, both aiohttp apps."""
