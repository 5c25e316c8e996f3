"""Durable audit spool: call records are appended to a JSONL file and delivered to the hub in batches."""

from __future__ import annotations

import itertools
import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec

from mcp_gateway.errors import ApiRequestError, GatewayError, HubAuthError

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder(enc_hook=str).encode

#: Delivers a batch; returns the hub's verdict per record, in order ("accepted", "duplicate",
#: "rejected: <why>" or `KEY_REFUSED` + ": <why>"), or None when the hub answered without verdicts
#: (every record taken). Any other verdict is permanent too: the record is dead-lettered.
Sender = Callable[[Sequence[Mapping[str, Any]]], Awaitable[Sequence[str] | None]]

#: Verdict of a record the hub can never take: the agent key it must be reported under was refused
#: (revoked, or its user deactivated). Retrying would only fail again, and hold up every record behind it.
KEY_REFUSED = "key refused"

RECOVER = (
    "to report it later, POST the file's `record` objects to the hub's /api/v1/audit/calls with a valid "
    "agent key (the hub ignores event_ids it already has; see docs/gateway.md, 'Dead letters')"
)


class PreparedRecord:
    """An encoded record still open for its last fields (see `AuditSpool.prepare`)."""

    __slots__ = ("event_id", "head")

    def __init__(self, event_id: str, head: bytes) -> None:
        self.event_id = event_id
        self.head = head


class AuditSpool:
    """Append-only JSONL file plus a delivered-offset file.

    Durability: each record is handed to the OS with one `write(2)` before the agent gets its result, so a
    crash of the gateway process loses nothing. It is not fsynced per call: a background round fsyncs the
    file at most `interval` seconds (default 1 s) after new records, whether or not the hub is reachable,
    so a power loss or kernel crash can lose at most about that last second. Records carry a uuid
    `event_id`, which the hub uses to ignore duplicates, so resending after a crash between send and offset
    update is safe.
    """

    def __init__(self, data_dir: Path, *, batch_size: int = 500) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / "audit-spool.jsonl"
        self.offset_path = data_dir / "audit-spool.offset"
        #: Records the hub refused as invalid, with its reason: kept, never resent, never blocking.
        self.dead_letter_path = data_dir / "audit-dead-letter.jsonl"
        #: Only a delivered prefix larger than this is cut off while records are still pending.
        self.compact_bytes = 1_000_000
        self.batch_size = batch_size
        self._seal_torn_tail()
        self._fd = self._open()
        self._dirty = False
        # Event ids: a random prefix per spool opening and a counter: unique across restarts and
        # gateways, without a getrandom(2) call and UUID formatting on every allowed call.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)
        self._lock = anyio.Lock()
        self.has_records = anyio.Event()
        if self.pending_count() > 0:
            self.has_records.set()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1

    def sync(self) -> None:
        """fsync the spool if records were appended since the last sync."""
        if self._dirty and self._fd >= 0:
            self._dirty = False
            os.fsync(self._fd)

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
        prepared = self.prepare(record)
        self.commit(prepared)
        return prepared.event_id

    def prepare(self, record: Mapping[str, Any]) -> PreparedRecord:
        """Give `record` its `event_id` and encode it, without writing it yet.

        The gateway prepares a call's record while the upstream works and commits it, with the fields
        only the result can tell, once the result is in; `commit` is then one small encode and a write.
        """
        event_id = f"{self._id_prefix}-{next(self._ids)}"
        encoded = _encode({"event_id": event_id, **record})
        return PreparedRecord(event_id, encoded[:-1])  # open-ended: commit appends the last fields

    def commit(self, prepared: PreparedRecord, **fields: Any) -> None:
        """Write a prepared record, with `fields` and `recorded_at` added, to the spool (one write(2))."""
        fields["recorded_at"] = datetime.now(UTC).isoformat()
        tail = _encode(fields)
        line = b"%s,%s\n" % (prepared.head, tail[1:])
        # One write(2) on an O_APPEND descriptor: the record is in the OS before the agent sees its result.
        written = os.write(self._fd, line)
        while written < len(line):  # only on a nearly full disk
            written += os.write(self._fd, line[written:])
        self._dirty = True
        if not self.has_records.is_set():
            self.has_records.set()

    def _delivered_offset(self) -> int:
        try:
            offset = int(self.offset_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0
        # Past the end only if a crash fell inside a compaction: resend all (the hub dedupes).
        return offset if offset <= size else 0

    def _store_offset(self, offset: int) -> None:
        tmp = self.offset_path.with_suffix(".tmp")
        tmp.write_text(str(offset))
        os.replace(tmp, self.offset_path)

    def pending(self) -> list[dict[str, Any]]:
        """Records not yet acknowledged by the hub, oldest first."""
        return [record for _, record in self._read_from(self._delivered_offset())]

    def pending_count(self) -> int:
        return len(self.pending())

    def _read_from(self, offset: int, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
        """Up to `limit` (end offset, record) pairs after `offset`; a torn last line (crash mid-write) is left."""
        out: list[tuple[int, dict[str, Any]]] = []
        try:
            with self.path.open("rb") as handle:
                handle.seek(offset)
                position = offset
                for line in handle:
                    if not line.endswith(b"\n") or (limit is not None and len(out) >= limit):
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
        """Deliver every pending record in batches; returns how many the hub took (stored or duplicate).

        Stops at the first failure (records stay spooled) and raises it, so callers can back off. Reads one
        batch at a time, so a long outage does not mean re-reading the whole backlog on every retry.
        Records the hub will never take (rejected as invalid, or made by an agent whose key is now refused)
        go to the dead-letter file instead of blocking the queue.
        """
        async with self._lock:
            self.has_records = anyio.Event()
            self.sync()
            taken = 0
            try:
                while True:
                    batch = self._read_from(self._delivered_offset(), self.batch_size)
                    if not batch:
                        break
                    taken += await self._deliver([record for _, record in batch], send)
                    self._store_offset(batch[-1][0])
            except BaseException:
                self.has_records.set()
                raise
            finally:
                self._compact()
            return taken

    async def _deliver(self, records: list[dict[str, Any]], send: Sender) -> int:
        """Send `records`; dead-letter what the hub will never take. Raises when it cannot tell (kept, retried)."""
        try:
            answers = await send(records)
        except HubAuthError:
            # The key the whole batch went out under (the gateway's own): fixing it delivers them, so keep
            # them. A refused key of one calling agent comes back as per-record `KEY_REFUSED` verdicts.
            raise
        except ApiRequestError as exc:
            if exc.http_status >= 500 or exc.http_status in (408, 429):
                raise
            # The hub refused the batch as a whole: find the records it cannot take, one half at a time.
            if len(records) == 1:
                self._dead_letter(records[0], exc.message)
                return 0
            middle = len(records) // 2
            return await self._deliver(records[:middle], send) + await self._deliver(records[middle:], send)
        if answers is None:
            return len(records)
        if len(answers) != len(records):
            raise GatewayError(f"the hub answered {len(answers)} verdicts for {len(records)} records; will resend")
        taken = 0
        for record, verdict in zip(records, answers, strict=True):
            if verdict in ("accepted", "duplicate"):
                taken += 1
            else:
                self._dead_letter(record, verdict)
        return taken

    def _dead_letter(self, record: Mapping[str, Any], reason: str) -> None:
        agent = record.get("agent")
        if reason.startswith(KEY_REFUSED):
            who = (agent.get("name") or agent.get("id")) if isinstance(agent, Mapping) else None
            what = (
                f"audit record {record.get('event_id')} (tool {record.get('tool')}) cannot be delivered: the hub "
                f"refused the API key of agent {who or '?'} that made the call, so it can never be reported under it"
            )
        else:
            what = f"the hub rejected audit record {record.get('event_id')} (tool {record.get('tool')}) as invalid"
        logger.error(
            "%s (%s); moved to %s, delivery of the others continues; %s", what, reason, self.dead_letter_path, RECOVER
        )
        line = _encode({"rejected_at": datetime.now(UTC).isoformat(), "reason": reason, "record": record}) + b"\n"
        fd = os.open(self.dead_letter_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def dead_letters(self) -> list[dict[str, Any]]:
        try:
            lines = self.dead_letter_path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def _compact(self) -> None:
        """Drop the delivered prefix: all of the file once drained, else once it passes `compact_bytes`.

        Synchronous from the first stat to the reopened descriptor, so no record is appended in between
        (appends run on this event loop). The offset is stored before the file shrinks: a crash in between
        only resends (deduplicated), it never skips.
        """
        if self._fd < 0:
            return  # closed under a cancelled delivery: the next opening compacts
        delivered = self._delivered_offset()
        if delivered == 0:
            return
        size = self.path.stat().st_size
        if delivered >= size:
            self._store_offset(0)
            os.ftruncate(self._fd, 0)
            return
        if delivered < self.compact_bytes:
            return
        self.sync()
        with self.path.open("rb") as handle:
            handle.seek(delivered)
            rest = handle.read()
        tmp = self.path.with_suffix(".compact")
        tmp.write_bytes(rest)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        self._store_offset(0)
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = self._open()

    async def run(self, send: Sender, *, interval: float = 1.0, max_backoff: float = 30.0) -> None:
        """Forever: fsync new records within `interval` s and deliver them, backing off while the hub is down."""
        backoff = interval
        retry_at = 0.0
        while True:
            await self.has_records.wait()
            self.sync()
            if anyio.current_time() >= retry_at:
                try:
                    await self.flush(send)
                    backoff = interval
                except GatewayError as exc:
                    logger.warning("audit delivery failed, will retry in %.0fs: %s", backoff, exc.message)
                    retry_at = anyio.current_time() + backoff
                    backoff = min(max_backoff, backoff * 2)
            await anyio.sleep(interval)
