"""Write the hub's OpenAPI document (the one served at /schema/openapi.json) to a file: `make openapi`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from backend.settings import load_settings

DEFAULT_PATH = Path("docs/openapi.json")


def document() -> dict[str, Any]:
    """The document as the app serves it; building the app connects to nothing."""
    from backend.app import create_app

    app = create_app(load_settings({}), with_worker=False)
    return app.openapi_schema.to_schema()


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT_PATH
    path.write_text(render(document()))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
