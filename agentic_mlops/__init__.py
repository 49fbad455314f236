"""agentic-mlops: the ML lifecycle as Prefect flows, with AI agents at its decision points."""

from agentic_mlops.runtime import configure_environment

configure_environment()

__version__ = "0.1.0"
