"""A bundled demo MCP server with risky-looking infrastructure tools, to try the whole approval loop."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import typer
from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

demo = MCPServer(
    "preloop-demo-infra",
    instructions="Demo infrastructure tools for trying Preloop. Nothing here touches real systems.",
)


class Deployment(BaseModel):
    deployment_id: str
    service: str
    environment: str
    version: str
    status: Literal["rolled_out"]
    replicas_updated: int
    finished_at: str


class Refund(BaseModel):
    refund_id: str
    charge_id: str
    amount: float
    currency: str
    status: Literal["succeeded"]


class ScaleChange(BaseModel):
    service: str
    environment: str
    previous_replicas: int
    replicas: int


def _short_id(prefix: str, *parts: object) -> str:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:10]
    return f"{prefix}_{digest}"


@demo.tool(annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=False, open_world_hint=True))
def deploy_production(
    service: Annotated[str, Field(description="Service to deploy, e.g. checkout-api")] = "checkout-api",
    version: Annotated[str, Field(description="Image tag or git sha")] = "v1.42.0",
    environment: Annotated[str, Field(description="production, staging or dev")] = "production",
) -> Deployment:
    """Roll out a new version of a service to an environment."""
    return Deployment(
        deployment_id=_short_id("dep", service, version, environment),
        service=service,
        environment=environment,
        version=version,
        status="rolled_out",
        replicas_updated=6 if environment == "production" else 2,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


@demo.tool(annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=True))
def drop_table(
    table: Annotated[str, Field(description="Table name")],
    database: Annotated[str, Field(description="Database name")] = "orders",
) -> str:
    """Drop a database table. Irreversible."""
    return f"DROP TABLE {database}.{table}: ok, 0 rows remain, table removed from the catalog."


@demo.tool(annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=False, open_world_hint=True))
def refund(
    charge_id: Annotated[str, Field(description="The charge to refund, e.g. ch_123")],
    amount: Annotated[float, Field(description="Amount to refund", gt=0)],
    currency: Annotated[str, Field(description="ISO currency code")] = "USD",
) -> Refund:
    """Refund (part of) a customer charge."""
    return Refund(
        refund_id=_short_id("re", charge_id, amount),
        charge_id=charge_id,
        amount=amount,
        currency=currency.upper(),
        status="succeeded",
    )


@demo.tool(annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=True))
def scale_service(
    service: Annotated[str, Field(description="Service name")],
    replicas: Annotated[int, Field(description="Desired replica count", ge=0, le=500)],
    environment: Annotated[str, Field(description="production, staging or dev")] = "production",
) -> ScaleChange:
    """Change the number of replicas of a service."""
    return ScaleChange(service=service, environment=environment, previous_replicas=4, replicas=replicas)


@demo.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True))
def read_logs(
    service: Annotated[str, Field(description="Service name")] = "checkout-api",
    lines: Annotated[int, Field(description="How many lines", ge=1, le=200)] = 5,
) -> str:
    """Read the most recent log lines of a service."""
    now = datetime.now(UTC).replace(microsecond=0)
    levels = ["INFO", "INFO", "WARN", "INFO", "ERROR"]
    messages = [
        "GET /healthz 200 1ms",
        "POST /v1/checkout 201 84ms",
        "slow query on orders_by_customer (412ms)",
        "POST /v1/checkout 201 77ms",
        "payment provider timeout, retrying (attempt 2/3)",
    ]
    out = []
    for i in range(lines):
        ts = (now - timedelta(seconds=(lines - i) * 7)).isoformat()
        out.append(f"{ts} {service} {levels[i % 5]:5} {messages[i % 5]}")
    return "\n".join(out)


def run_demo(http: str | None = None) -> None:
    """Serve the demo tools on stdio, or on streamable HTTP at HOST:PORT."""
    if http:
        host, _, port = http.rpartition(":")
        demo.run("streamable-http", host=host or "127.0.0.1", port=int(port))
    else:
        demo.run("stdio")


if __name__ == "__main__":
    from mcp_gateway.cli import demo_upstream_command

    typer.run(demo_upstream_command)
