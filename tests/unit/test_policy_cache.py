from backend.policy_store import service

SOURCE = 'version: "1"\ntools:\n  - {name: read_logs, action: allow}\ndefaults: {unknown_tools: deny}\n'


def test_compiled_versions_are_cached_and_bounded() -> None:
    service._CACHE.clear()
    first = service.cached_policy("org", "sha-0", SOURCE)
    assert service.cached_policy("org", "sha-0", SOURCE) is first  # compiled once
    for n in range(1, service._CACHE_SIZE + 10):
        service._remember(("org", f"sha-{n}"), first)
    assert len(service._CACHE) == service._CACHE_SIZE
    assert ("org", "sha-0") not in service._CACHE  # least recently used went first
