"""`/ready` for orchestrators and `/metrics` for Prometheus."""

from __future__ import annotations

import hmac

from litestar import Controller, Request, Response, get
from litestar.openapi.datastructures import ResponseSpec

from backend.errors import NotAuthenticated
from backend.hub import Hub
from backend.observability import metrics, readiness
from backend.openapi import error_response, media_types


class ObservabilityController(Controller):
    tags = ["system"]

    @get(
        "/ready", operation_id="ready", exclude_from_auth=True,
        summary="Ready for traffic: database and Redis reachable, migrations applied (else 503 saying what is wrong)",
        responses={503: ResponseSpec(readiness.Readiness, generate_examples=False, description="Not ready; says why")},
    )
    async def ready(self, hub: Hub) -> Response[readiness.Readiness]:
        report = await readiness.check(hub)
        return Response(report, status_code=200 if report.ready else 503)

    @get("/metrics", operation_id="metrics", exclude_from_auth=True, summary="Prometheus metrics of this process",
         operation_class=media_types(metrics.CONTENT_TYPE),
         responses={401: error_response(401, "PRELOOP_METRICS_TOKEN is set and not sent")})
    async def metrics(self, request: Request, hub: Hub) -> Response[bytes]:  # type: ignore[type-arg]
        token = hub.settings.observability.metrics_token
        if token:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
                raise NotAuthenticated("/metrics needs 'Authorization: Bearer <PRELOOP_METRICS_TOKEN>'")
        await metrics.refresh_from_database()
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)
