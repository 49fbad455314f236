"""Extra MCP servers the agents may consult, mounted from settings as pydantic-ai toolsets.

`mcp_servers` names them, each as `{name, command, args, env}` (a local server over stdio) or
`{name, url, headers}` (streamable HTTP), with `read_only` (default true) and an optional
`tools` allow-list. A team can give the triage agent its ticketing or experiment-tracking
server this way; each tool appears to the model as `<name>_<tool>`.

What read-only means here, honestly: MCP has no enforced permissions, only hints a server
declares about its own tools. A read-only mount shows the model only the tools whose
annotations say `readOnlyHint: true` (a tool that declares nothing is hidden), narrowed to the
allow-list when there is one. That keeps well-behaved servers' write tools out of reach; it
cannot stop a server that mislabels a tool. Where that matters, give the server credentials
that can only read, or list the tools by name. `read_only: false` shows every tool (or the
allow-list), for servers you trust to be written to.

Extra tools never widen what an agent may decide: its output is still a closed decision that
the guardrails bound. The deterministic `policy` gets no extra toolsets at all, so decisions
without an LLM are unchanged and start no server. A server that fails to start fails the LLM's
run, and the policy decides instead; an entry that does not validate is skipped with a warning.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentic_mlops.decisions import POLICY
from agentic_mlops.settings import Settings

logger = logging.getLogger(__name__)


class MountedServer(BaseModel):
    """One entry of the `mcp_servers` setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_]{0,31}$",
        description="Prefix of the server's tool names as the model sees them.",
    )
    command: str | None = Field(default=None, description="Executable of a stdio server.")
    args: list[str] = Field(default_factory=list, description="Its arguments.")
    env: dict[str, str] | None = Field(
        default=None,
        description="Variables for the server process; it starts with a minimal environment "
        "(PATH, HOME, ...) plus these.",
    )
    url: str | None = Field(default=None, description="Address of a streamable-HTTP server.")
    headers: dict[str, str] | None = Field(default=None, description="HTTP headers it needs.")
    read_only: bool = Field(default=True, description="Only tools that declare readOnlyHint: true.")
    tools: list[str] | None = Field(
        default=None, description="Only these tools (names as the server gives them)."
    )
    start_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long the server may take to start and answer MCP's handshake: a "
        "Python server importing its libraries takes tens of seconds on a busy machine "
        "(pydantic-ai's default is 5 s).",
    )

    @model_validator(mode="after")
    def _one_transport(self) -> MountedServer:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either `command` (stdio) or `url` (HTTP), not both or neither")
        return self


def declares_read_only(metadata: dict[str, Any] | None) -> bool:
    """Whether an MCP tool's annotations (as pydantic-ai keeps them) say it only reads."""
    annotations = (metadata or {}).get("annotations") or {}
    return annotations.get("readOnlyHint") is True


def server_toolset(server: MountedServer) -> Any:
    """The server as a toolset: filtered to what the mount allows, tools prefixed by name."""
    from fastmcp.client.transports import StdioTransport
    from pydantic_ai.mcp import MCPToolset

    if server.command is not None:
        source = StdioTransport(
            command=server.command, args=server.args, env=server.env, keep_alive=False
        )
        toolset = MCPToolset(
            source,
            id=server.name,
            tool_error_behavior="failed",
            init_timeout=server.start_timeout_seconds,
        )
    else:
        toolset = MCPToolset(
            server.url,
            id=server.name,
            headers=server.headers,
            tool_error_behavior="failed",
            init_timeout=server.start_timeout_seconds,
        )
    allowed = set(server.tools) if server.tools is not None else None

    def visible(ctx: Any, tool_def: Any) -> bool:
        if allowed is not None and tool_def.name not in allowed:
            return False
        return not server.read_only or declares_read_only(tool_def.metadata)

    return toolset.filtered(visible).prefixed(server.name)


def mounted_servers(settings: Settings) -> list[MountedServer]:
    """The valid entries of `mcp_servers`; an invalid one is skipped with a warning."""
    servers = []
    for entry in settings.mcp.servers:
        try:
            servers.append(MountedServer.model_validate(entry))
        except ValidationError as error:
            logger.warning("MCP server %r is not mounted: %s", entry.get("name"), error)
    return servers


def mounted_toolsets(model: Any, settings: Settings) -> list[Any]:
    """The extra toolsets of an agent on `model`: none for the policy, else every mounted
    server of the settings."""
    if getattr(model, "model_name", model) == POLICY:
        return []
    return [server_toolset(server) for server in mounted_servers(settings)]
