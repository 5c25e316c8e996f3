"""Litestar resolves the dependencies of one level concurrently, in an anyio task group whose tasks
cost more than the lookups themselves (~3 % of the API's CPU per approval call when `principal` and
`hub` were siblings). `principal` names `hub`, so the two resolve one after the other."""

from __future__ import annotations

from litestar.routes import HTTPRoute

from backend.app import create_app


def test_no_route_resolves_its_dependencies_in_a_task_group() -> None:
    app = create_app()
    concurrent: dict[str, list[list[str]]] = {}
    handlers = 0
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for method, (_, kwargs_model) in route.route_handler_map.items():
            handlers += 1
            batches = [sorted(d.key for d in batch) for batch in kwargs_model.dependency_batches]
            if any(len(batch) > 1 for batch in batches):
                concurrent[f"{method} {route.path}"] = batches
    assert handlers > 100  # the scan sees the API
    approve = next(r for r in app.routes if r.path == "/api/v1/approvals/{approval_id:uuid}/approve")
    assert isinstance(approve, HTTPRoute)
    assert [sorted(d.key for d in b) for b in approve.route_handler_map["POST"][1].dependency_batches] == [
        ["hub"], ["principal"]
    ]
    # The history's query-parameter filter sits next to the hub: two routes, neither on a call's path.
    assert concurrent == {
        "GET /api/v1/approvals": [["filters", "hub"], ["principal"]],
        "GET /api/v1/approvals/export": [["filters", "hub"], ["principal"]],
    }
