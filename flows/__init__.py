"""Prefect flows: one pipeline phase per module, read top to bottom like a runbook."""
