"""Durable audit spool: call records are appended to a JSONL file and delivered to the hub in batches."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from mcp_gateway.errors import GatewayError

logger = logging.getLogger(__name__)

Sender = Callable[[Sequence[Mapping[str, Any]]], Awaitable[None]]


class AuditSpool:
    """Append-only JSONL file plus a delivered-offset file.

    Each record is written and flushed to the OS before the agent gets its result, so a gateway crash
    loses nothing; the file is fsynced once per flush round. Records carry a uuid `event_id`, which the
    hub uses to ignore duplicates, so resending after a crash between send and offset update is safe.
    """

    def __init__(self, data_dir: Path, *, batch_size: int = 500) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "audit-spool.jsonl"
        self.offset_path = data_dir / "audit-spool.offset"
        self.batch_size = batch_size
        self._seal_torn_tail()
        self._file = self.path.open("a", encoding="utf-8")
        self._lock = anyio.Lock()
        self.has_records = anyio.Event()
        if self.pending_count() > 0:
            self.has_records.set()

    def close(self) -> None:
        self._file.close()

    def _seal_torn_tail(self) -> None:
        """End a line torn by a crash, so the next record starts on its own line (the fragment is skipped)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                handle.write(b"\n")

    def append(self, record: Mapping[str, Any]) -> str:
        """Spool one call record; returns its `event_id`."""
        event = dict(record)
        event.setdefault("event_id", str(uuid.uuid4()))
        event.setdefault("recorded_at", datetime.now(UTC).isoformat())
        self._file.write(json.dumps(event, separators=(",", ":"), default=str) + "\n")
        self._file.flush()
        self.has_records.set()
        return str(event["event_id"])

    def _delivered_offset(self) -> int:
        try:
            return int(self.offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _store_offset(self, offset: int) -> None:
        tmp = self.offset_path.with_suffix(".tmp")
        tmp.write_text(str(offset))
        os.replace(tmp, self.offset_path)

    def pending(self) -> list[dict[str, Any]]:
        """Records not yet acknowledged by the hub, oldest first."""
        return [record for _, record in self._read_from(self._delivered_offset())]

    def pending_count(self) -> int:
        return len(self.pending())

    def _read_from(self, offset: int) -> list[tuple[int, dict[str, Any]]]:
        """(end offset, record) pairs after `offset`; a torn last line (crash mid-write) is left for later."""
        out: list[tuple[int, dict[str, Any]]] = []
        try:
            with self.path.open("rb") as handle:
                handle.seek(offset)
                position = offset
                for line in handle:
                    if not line.endswith(b"\n"):
                        break
                    position += len(line)
                    try:
                        out.append((position, json.loads(line)))
                    except ValueError:
                        logger.warning("skipping a corrupt audit spool line at offset %d", position - len(line))
        except FileNotFoundError:
            return []
        return out

    async def flush(self, send: Sender) -> int:
        """Deliver every pending record in batches; returns how many the hub acknowledged.

        Stops at the first failure (records stay spooled) and raises it, so callers can back off.
        """
        async with self._lock:
            self.has_records = anyio.Event()
            self._file.flush()
            os.fsync(self._file.fileno())
            entries = self._read_from(self._delivered_offset())
            sent = 0
            try:
                for start in range(0, len(entries), self.batch_size):
                    batch = entries[start : start + self.batch_size]
                    await send([record for _, record in batch])
                    self._store_offset(batch[-1][0])
                    sent += len(batch)
            except BaseException:
                self.has_records.set()
                raise
            self._compact_if_drained()
            return sent

    def _compact_if_drained(self) -> None:
        # Truncate only when everything is delivered, so the offset never points past live data.
        if self._delivered_offset() >= self.path.stat().st_size and self.path.stat().st_size > 1_000_000:
            self._file.close()
            self.path.write_bytes(b"")
            self._store_offset(0)
            self._file = self.path.open("a", encoding="utf-8")

    async def run(self, send: Sender, *, interval: float = 1.0, max_backoff: float = 30.0) -> None:
        """Flush forever: on new records (at most every `interval` s), with backoff while the hub is down."""
        backoff = interval
        while True:
            await self.has_records.wait()
            try:
                await self.flush(send)
                backoff = interval
            except GatewayError as exc:
                logger.warning("audit delivery failed, will retry in %.0fs: %s", backoff, exc.message)
                await anyio.sleep(backoff)
                backoff = min(max_backoff, backoff * 2)
                continue
            await anyio.sleep(interval)
