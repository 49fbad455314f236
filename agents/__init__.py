"""pydantic-ai agents, one decision point per module."""
