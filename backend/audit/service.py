"""Append to and verify the hash-chained audit log."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from backend import db
from backend.audit.tables import AuditEvent, AuditHead
from backend.transactions import current_transaction, is_sqlite, lock, write_transaction

GENESIS = "0" * 64


@dataclass(frozen=True)
class Actor:
    """Who did something: a user, an API key (agent), the system (deadlines), or the gateway."""

    type: str  # "user" | "key" | "system" | "gateway"
    id: str = ""
    label: str = ""

    @classmethod
    def system(cls, label: str = "preloop") -> Actor:
        return cls("system", "", label)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def event_hash(row: dict[str, Any]) -> str:
    """The hash covers every meaningful field and the previous hash, so edits and deletions show."""
    created = row["created_at"]
    created_text = created.astimezone(UTC).isoformat() if isinstance(created, datetime) else str(created)
    data = row["data"]
    if isinstance(data, str):
        data = json.loads(data)
    body = [
        str(row["org_id"]),
        int(row["seq"]),
        row["kind"],
        row["actor_type"],
        row["actor_id"],
        row["actor_label"],
        row["subject_type"],
        row["subject_id"],
        data,
        created_text,
        row["prev_hash"],
    ]
    return hashlib.sha256(_canonical(body).encode()).hexdigest()


async def record(
    org_id: str | uuid.UUID,
    kind: str,
    actor: Actor,
    *,
    subject_type: str = "",
    subject_id: str | uuid.UUID = "",
    data: dict[str, Any] | None = None,
    external_id: str | None = None,
) -> dict[str, Any]:
    """Append one event to the org's chain.

    Inside a write transaction the event is appended as that transaction's last statement, so
    the org's chain lock is held for one read and one insert, not for the whole unit of work.
    The returned dict then has no `seq`/`hash` yet. Outside a transaction it is appended at once.
    """
    row = event_row(org_id, kind, actor, subject_type, subject_id, data or {}, datetime.now(UTC))
    state = current_transaction()
    if state is not None and external_id is None:
        pending: list[dict[str, Any]] | None = state.scratch.get("audit")
        if pending is None:
            pending = state.scratch["audit"] = []
            state.before_commit.append(lambda: _append(pending))
        pending.append(row)
        return row
    async with write_transaction():
        if external_id is not None:
            existing = await AuditEvent.select().where(AuditEvent.external_id == external_id).first()
            if existing is not None:
                return dict(existing)
        await _append([row], external_id=external_id)
    return row


def event_row(
    org_id: str | uuid.UUID,
    kind: str,
    actor: Actor,
    subject_type: str,
    subject_id: str | uuid.UUID,
    data: dict[str, Any],
    created_at: datetime,
) -> dict[str, Any]:
    """One event as it is appended (before its `seq` and hash)."""
    return {
        "org_id": str(org_id),
        "kind": kind,
        "actor_type": actor.type,
        "actor_id": str(actor.id),
        "actor_label": actor.label,
        "subject_type": subject_type,
        "subject_id": str(subject_id),
        "data": json.loads(_canonical(data)),
        # Microsecond precision is all both databases keep; hash what will be read back.
        "created_at": created_at,
    }


async def record_many_once(
    org_id: str | uuid.UUID, events: list[tuple[str, str, str, dict[str, Any], str]], *, actor: Actor
) -> list[bool]:
    """Append `(kind, subject_type, subject_id, data, external_id)` events in one transaction, skipping
    those whose external id is already stored (or repeated earlier in `events`); True for each appended.

    The existence check runs under the org's chain lock, so concurrent resends store a record once.
    """
    stamp = datetime.now(UTC)
    async with write_transaction():
        await lock(f"audit:{org_id}")
        wanted = list({e[4] for e in events})
        seen: set[str] = set()
        for start in range(0, len(wanted), 500):
            rows = await AuditEvent.select(AuditEvent.external_id).where(
                AuditEvent.external_id.is_in(wanted[start : start + 500])
            )
            seen.update(str(r["external_id"]) for r in rows)
        fresh: list[dict[str, Any]] = []
        ids: list[str | None] = []
        stored: list[bool] = []
        for kind, subject_type, subject_id, data, external_id in events:
            if external_id in seen:
                stored.append(False)
                continue
            seen.add(external_id)
            stored.append(True)
            fresh.append(event_row(org_id, kind, actor, subject_type, subject_id, data, stamp))
            ids.append(external_id)
        if fresh:
            await _append(fresh, external_ids=ids)
    return stored


async def _append(
    rows: list[dict[str, Any]], *, external_id: str | None = None, external_ids: list[str | None] | None = None
) -> None:
    """Chain `rows` onto their orgs' logs, in order, under each org's lock."""
    by_org: dict[str, list[dict[str, Any]]] = {}
    keys = external_ids if external_ids is not None else [external_id] * len(rows)
    for row, key in zip(rows, keys, strict=True):
        row["_external_id"] = key
        by_org.setdefault(row["org_id"], []).append(row)
    for org in sorted(by_org):  # a fixed order: two transactions never wait on each other's orgs
        if not is_sqlite() and await _chain_in_sql(org, by_org[org]):
            continue
        head = await _locked_head(org)
        seq = head["seq"] if head else 0
        prev = head["hash"] if head else GENESIS
        events = []
        for row in by_org[org]:
            seq += 1
            row["seq"], row["prev_hash"] = seq, prev
            row["hash"] = prev = event_hash(row)
            key = row.pop("_external_id")
            events.append(AuditEvent(**row, chain_pos=f"{org}:{seq}", external_id=key))
        stamp = datetime.now(UTC)
        if head is not None and not is_sqlite():
            await _append_and_move(org, events, seq, prev, stamp)
            continue
        await AuditEvent.insert(*events)
        if head is None:
            await AuditHead.insert(
                AuditHead(org_id=org, seq=seq, hash=prev, prev_hash=events[0].prev_hash, updated_at=stamp)
            )
        else:
            moved: dict[Any, Any] = {
                AuditHead.seq: seq, AuditHead.hash: prev, AuditHead.prev_hash: events[0].prev_hash,
                AuditHead.updated_at: stamp,
            }
            await AuditHead.update(moved).where(AuditHead.org_id == org)


_EVENT_COLUMNS = (
    "id", "org_id", "seq", "chain_pos", "kind", "actor_type", "actor_id", "actor_label",
    "subject_type", "subject_id", "data", "created_at", "prev_hash", "hash", "external_id", "note",
)


async def _append_and_move(org: str, events: list[AuditEvent], seq: int, last_hash: str, stamp: datetime) -> None:
    """PostgreSQL: insert the events and move the head in one statement (one round trip)."""
    values: list[str] = []
    args: list[Any] = [seq, last_hash, events[0].prev_hash, stamp, org]
    for event in events:
        values.append("(" + ",".join("{}::jsonb" if c == "data" else "{}" for c in _EVENT_COLUMNS) + ")")
        args += [json.dumps(event.data) if c == "data" else getattr(event, c) for c in _EVENT_COLUMNS]
    await db.fetch(
        "WITH moved AS (UPDATE audit_head SET seq = {}, hash = {}, prev_hash = {}, updated_at = {} WHERE org_id = {} "
        "RETURNING 1) "
        f"INSERT INTO audit_event ({', '.join(_EVENT_COLUMNS)}) VALUES {', '.join(values)}",
        *args,
    )


def _hash_parts(row: dict[str, Any]) -> tuple[str, str]:
    """`event_hash`'s canonical text around the two values only the chain head knows.

    The text is `p1 + str(seq) + p2 + '"' + prev_hash + '"]'` (a decimal and a hex digest need no
    escaping), so PostgreSQL can finish the hash under the head's lock; `event_hash` checks it.
    """
    created = row["created_at"].astimezone(UTC).isoformat()
    middle = [row["kind"], row["actor_type"], row["actor_id"], row["actor_label"], row["subject_type"],
              row["subject_id"], row["data"], created]
    return "[" + _canonical(str(row["org_id"])) + ",", "," + _canonical(middle)[1:-1] + ","


# `_CHAIN_SQL` moves the org's head, which it locked (`head`: `SELECT ... FOR UPDATE`), to the last
# appended event with an `INSERT ... ON CONFLICT DO UPDATE` that always conflicts on `org_id`, not an
# `UPDATE`: the head row was usually moved by another transaction after this statement's snapshot
# was taken (that is what the lock waited for), and an UPDATE finding it would re-check it with
# PostgreSQL's EvalPlanQual, which initialises every sub-plan of the statement again; the conflict path
# updates the row's newest version directly. The proposed row's `id` is the head's, negated: see
# `_advance_head_sql`.
_MOVE_HEAD = (
    "ON CONFLICT (org_id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash, prev_hash = EXCLUDED.prev_hash, "
    "updated_at = EXCLUDED.updated_at RETURNING 1"
)


def _sha_sql(p1: str, seq: str, p2: str, prev: str) -> str:
    """SQL for `event_hash` from `_hash_parts`' texts and the chain position (`seq`, `prev`: SQL)."""
    return f"encode(sha256(convert_to({p1} || ({seq})::text || {p2} || '\"' || {prev} || '\"]', 'UTF8')), 'hex')"


def _advance_head_sql(after: str, parts: list[tuple[str, str]]) -> str:
    """PostgreSQL: the CTE `head`, which appends `len(parts)` events to the org's chain head and returns
    the head as moved (`seq`, `hash` of the last event; `prev_hash`, the hash the first one chains from).

    The lock and the move are one `INSERT ... ON CONFLICT (org_id) DO UPDATE` that always conflicts:
    PostgreSQL locks the head row's newest version (waiting for a transaction that holds it) and
    computes the new position from that version, `audit_head.seq` and `audit_head.hash`. A
    `SELECT ... FOR UPDATE` would also wait, but then re-check the row with EvalPlanQual (the row has
    usually moved since the statement's snapshot), which initialises every sub-plan of the statement
    again; the later `UPDATE` of the head re-checked it a second time. The proposed row (the head as the
    snapshot saw it) is never stored: the row always exists, so nothing is inserted for an org without a
    head (its first event takes the advisory-lock path). Its `id` is the head's negated, an id no row has:
    PostgreSQL's first look for a conflict can miss a head row that another transaction moved to a new
    index entry while the look ran; the proposed row is then inserted tentatively, the `org_id` index
    finds the conflict and PostgreSQL takes the row back and looks again. With the head's own id the
    primary key would refuse the tentative row first, as an error (seen once in 6,400 racing appends).
    Nothing happens unless `after` returns a row, and only after it ran (its rows lock first).

    `parts` are `(p1, p2)` SQL text expressions (`_hash_parts`), in the events' order. Arguments: the
    timestamp, the org, then those of `parts`' expressions from the last event's to the first's (the
    last event's hash is the outermost expression).
    """
    chained = "audit_head.hash"
    for n, (p1, p2) in enumerate(parts, start=1):
        chained = _sha_sql(p1, f"audit_head.seq + {n}", p2, chained)
    return (
        "head AS (\n    INSERT INTO audit_head (id, org_id, seq, hash, prev_hash, updated_at)\n"
        "    SELECT -h.id, h.org_id, h.seq, h.hash, h.prev_hash, {}::timestamptz FROM audit_head h\n"
        f"    WHERE h.org_id = {{}} AND EXISTS (SELECT 1 FROM {after})\n"
        f"    ON CONFLICT (org_id) DO UPDATE SET seq = audit_head.seq + {len(parts)}, prev_hash = audit_head.hash,\n"
        f"        hash = {chained}, updated_at = EXCLUDED.updated_at\n"
        "    RETURNING seq, hash, prev_hash\n)"
    )


_CHAIN_SQL = """
WITH RECURSIVE head AS (
    SELECT id, seq, hash FROM audit_head WHERE org_id = {} FOR UPDATE
), ev AS (
    SELECT * FROM unnest({}::text[], {}::text[], {}::uuid[], {}::text[], {}::text[], {}::text[], {}::text[],
                         {}::text[], {}::text[], {}::text[], {}::timestamptz[], {}::text[])
        WITH ORDINALITY AS e(p1, p2, id, kind, actor_type, actor_id, actor_label, subject_type, subject_id,
                             data, created_at, external_id, n)
), chain AS (
    SELECT e.n, h.seq + 1 AS seq, h.hash::text AS prev_hash,
           """ + _sha_sql("e.p1", "h.seq + 1", "e.p2", "h.hash") + """ AS hash
    FROM head h JOIN ev e ON e.n = 1
    UNION ALL
    SELECT e.n, c.seq + 1, c.hash::text,
           """ + _sha_sql("e.p1", "c.seq + 1", "e.p2", "c.hash") + """
    FROM chain c JOIN ev e ON e.n = c.n + 1
), moved AS (
    INSERT INTO audit_head (id, seq, hash, prev_hash, updated_at, org_id)
    SELECT -h.id, last.seq, last.hash, h.hash, {}, {}
    FROM (SELECT seq, hash FROM chain ORDER BY n DESC LIMIT 1) AS last CROSS JOIN head h
    """ + _MOVE_HEAD + """
)
INSERT INTO audit_event (id, org_id, seq, chain_pos, kind, actor_type, actor_id, actor_label, subject_type,
                         subject_id, data, created_at, prev_hash, hash, external_id, note)
SELECT e.id, {}, c.seq, {} || ':' || c.seq, e.kind, e.actor_type, e.actor_id, e.actor_label, e.subject_type,
       e.subject_id, e.data::jsonb, e.created_at, c.prev_hash, c.hash, e.external_id, ''
FROM ev e JOIN chain c ON c.n = e.n
RETURNING seq, prev_hash, hash
"""


# A `data` value that PostgreSQL fills in while appending (`chained_event_sql`): its canonical JSON is
# what the statement splices in, so Python never needs to read the value first.
HOLE = "\x00preloop-audit-hole\x00"


def canonical_object_sql(expr: str) -> str:
    """PostgreSQL: `_canonical` of the flat JSON object `expr`, for objects whose values are strings,
    booleans or null (the caller guarantees it; `tests/integration/audit` proves the texts agree).
    Keys sort by code point (`COLLATE "C"` on UTF-8) as `sort_keys` does; `to_json(text)` escapes exactly
    what `json.dumps(..., ensure_ascii=False)` escapes. No literal braces: Piccolo's `raw()` reads them."""
    return (
        "(SELECT chr(123) || coalesce(string_agg(to_json(k)::text || ':' || CASE jsonb_typeof(v) "
        "WHEN 'string' THEN to_json(v #>> ARRAY[]::text[])::text ELSE v::text END, ',' ORDER BY k COLLATE \"C\"), '') "
        f"|| chr(125) FROM jsonb_each({expr}) AS e(k, v))"
    )


def chained_event_sql(row: dict[str, Any], *, after: str, hole: str | None = None) -> tuple[str, list[Any]]:
    """PostgreSQL: CTEs (`ev`, `head`, `logged`) that append one event (`event_row`) to its org's chain
    inside the statement they join (the head locked and moved by `_advance_head_sql`), with the value of
    its `data` that is `HOLE` given by the SQL expression `hole` over `s`, the row of the CTE `after` (no
    `hole`: `data` is complete).

    Nothing is appended unless `after` returns a row, and the chain head is locked only after `after`
    ran (its row locks first: the same order as a unit of work that updates a row and then appends).
    `logged` returns the appended event's `seq`. Placeholders are Piccolo `raw()`'s `{}`; the
    arguments come in order.
    """
    org = row["org_id"]
    p1, p2 = _hash_parts(row)
    mark = _canonical(HOLE)
    if hole is None:
        (p2a, p2b), (data_a, data_b), hole = (p2, ""), (_canonical(row["data"]), ""), "''"
    else:
        p2a, p2b = p2.split(mark)
        data_a, data_b = _canonical(row["data"]).split(mark)
    head = _advance_head_sql(after, [("{}::text", "(SELECT p2 FROM ev)")])
    sql = f"""ev AS (
    SELECT {{}}::text || {hole} || {{}}::text AS p2, {{}}::text || {hole} || {{}}::text AS data FROM {after} s
), {head}, logged AS (
    INSERT INTO audit_event (id, org_id, seq, chain_pos, kind, actor_type, actor_id, actor_label, subject_type,
                             subject_id, data, created_at, prev_hash, hash, external_id, note)
    SELECT {{}}::uuid, {{}}, h.seq, {{}}::text || ':' || h.seq, {{}}, {{}}, {{}}, {{}}, {{}}, {{}}, e.data::jsonb,
           {{}}::timestamptz, h.prev_hash, h.hash, NULL, ''
    FROM head h CROSS JOIN ev e RETURNING seq
)"""
    args: list[Any] = [p2a, p2b, data_a, data_b, datetime.now(UTC), org, p1, uuid.uuid4(), org, org]
    args += [row[c] for c in ("kind", "actor_type", "actor_id", "actor_label", "subject_type", "subject_id")]
    args.append(row["created_at"])
    return sql, args


def chained_events_sql(rows: list[dict[str, Any]], *, after: str) -> tuple[str, list[Any]]:
    """PostgreSQL: CTEs (`head`, `chain1` … `chainN`, `logged`) that append the events `rows`
    (`event_row`s of one org, `data` complete), in order, to the org's chain inside the statement they
    join: `chained_event_sql` for several events, each hash finished in SQL from the one before it.

    Nothing is appended unless `after` returns a row, and the chain head is locked only after `after`
    ran (its rows lock first). `logged` returns one `seq` per appended event. Placeholders are Piccolo
    `raw()`'s `{}`; the arguments come in order.
    """
    assert rows
    assert len({str(r["org_id"]) for r in rows}) == 1
    org = str(rows[0]["org_id"])
    hashed = [_hash_parts(row) for row in rows]
    head = _advance_head_sql(after, [("{}::text", "{}::text")] * len(rows))
    args: list[Any] = [datetime.now(UTC), org]
    for p1, p2 in reversed(hashed):  # the head's expression nests the last event's hash outermost
        args += [p1, p2]
    # Each event's hash again, from the hash the head moved from: the same function of the same texts,
    # so the last one is the head's new hash.
    parts = [head]
    for n, (p1, p2) in enumerate(hashed, start=1):
        source = "head h" if n == 1 else f"chain{n - 1} p"
        seq, prev_hash = (f"h.seq - {len(rows) - 1}", "h.prev_hash") if n == 1 else ("p.seq + 1", "p.hash")
        parts.append(
            f"chain{n} AS (\n    SELECT {seq} AS seq, {prev_hash}::text AS prev_hash, "
            f"{_sha_sql('{}::text', seq, '{}::text', prev_hash)} AS hash\n    FROM {source}\n)"
        )
        args += [p1, p2]
    inserts: list[str] = []
    for n, row in enumerate(rows, start=1):
        inserts.append(
            "SELECT {}::uuid, {}, c.seq, {}::text || ':' || c.seq, {}, {}, {}, {}, {}, {}, {}::jsonb, "
            f"{{}}::timestamptz, c.prev_hash, c.hash, NULL, '' FROM chain{n} c"
        )
        args += [uuid.uuid4(), org, org]
        args += [row[c] for c in ("kind", "actor_type", "actor_id", "actor_label", "subject_type", "subject_id")]
        args += [_canonical(row["data"]), row["created_at"]]
    parts.append(
        "logged AS (\n    INSERT INTO audit_event (id, org_id, seq, chain_pos, kind, actor_type, actor_id, "
        "actor_label, subject_type, subject_id, data, created_at, prev_hash, hash, external_id, note)\n    "
        + "\n    UNION ALL ".join(inserts)
        + "\n    RETURNING seq\n)"
    )
    return ", ".join(parts), args


async def _chain_in_sql(org: str, rows: list[dict[str, Any]]) -> bool:
    """PostgreSQL: lock the org's head, chain and insert `rows` and move the head, in one statement.

    The head row's `FOR UPDATE` is the chain lock, held from this statement to the commit (one round
    trip instead of a locked read, hashing in Python, then the append). False, with nothing written,
    when the org has no head yet (its first event): the caller takes the advisory-lock path.
    """
    parts = [_hash_parts(row) for row in rows]
    columns: list[list[Any]] = [[p[0] for p in parts], [p[1] for p in parts], [uuid.uuid4() for _ in rows]]
    for name in ("kind", "actor_type", "actor_id", "actor_label", "subject_type", "subject_id"):
        columns.append([row[name] for row in rows])
    columns.append([json.dumps(row["data"]) for row in rows])
    columns.append([row["created_at"] for row in rows])
    columns.append([row["_external_id"] for row in rows])
    done = await db.fetch(_CHAIN_SQL, org, *columns, datetime.now(UTC), org, org, org)
    if not done:
        return False
    for row, chained in zip(rows, sorted(done, key=lambda r: r["seq"]), strict=True):
        del row["_external_id"]
        row["seq"], row["prev_hash"], row["hash"] = chained["seq"], chained["prev_hash"], chained["hash"]
    return True


async def _locked_head(org: str) -> dict[str, Any] | None:
    """The org's chain head, locked until the transaction ends (the chain lock).

    PostgreSQL: one `SELECT ... FOR UPDATE` of the head row is the lock and the read in one round
    trip; an org without a head yet (its first event) falls back to the advisory lock, so two first
    appends still queue. SQLite: the immediate transaction already holds the only write lock.
    """
    query = AuditHead.select(AuditHead.seq, AuditHead.hash).where(AuditHead.org_id == org)
    if not is_sqlite():
        head = await query.lock_rows().first()
        if head is not None:
            return head
        await lock(f"audit:{org}")
    return await query.first()


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events: int
    first_broken_seq: int | None = None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "first_broken_seq": self.first_broken_seq,
            "problem": self.problem,
        }


async def verify(org_id: str | uuid.UUID, *, batch: int = 2000) -> VerifyResult:
    """Walk the chain in order; report the first event whose hash or link does not hold.

    The chain head is read first and the walk stops at it: an append commits its event and the head
    together, so everything up to the head is settled, and events appended while the walk runs are
    left for the next verification instead of looking like a broken end."""
    org = str(org_id)
    head = await AuditHead.select(AuditHead.seq, AuditHead.hash).where(AuditHead.org_id == org).first()
    last_seq = None if head is None else int(head["seq"])
    expected_prev = GENESIS
    expected_seq = 1
    count = 0
    while last_seq is None or expected_seq <= last_seq:
        query = AuditEvent.select().where((AuditEvent.org_id == org) & (AuditEvent.seq >= expected_seq))
        if last_seq is not None:
            query = query.where(AuditEvent.seq <= last_seq)
        rows = await query.order_by(AuditEvent.seq).limit(batch).output(load_json=True)
        if not rows:
            break
        for row in rows:
            if row["seq"] != expected_seq:
                return VerifyResult(False, count, expected_seq, f"event {expected_seq} is missing")
            if row["prev_hash"] != expected_prev:
                return VerifyResult(False, count, row["seq"], "link to the previous event is broken")
            if event_hash(row) != row["hash"]:
                return VerifyResult(False, count, row["seq"], "event content does not match its hash")
            expected_prev = row["hash"]
            expected_seq += 1
            count += 1
    if head is not None and last_seq is not None:
        if last_seq >= expected_seq:
            problem = f"events {expected_seq}..{last_seq} are missing from the end of the chain"
            return VerifyResult(False, count, expected_seq, problem)
        if head["hash"] != expected_prev:
            return VerifyResult(False, count, count, "the newest event does not match the chain head")
    return VerifyResult(ok=True, events=count)


async def list_events(
    org_id: str | uuid.UUID,
    *,
    kind: str | None = None,
    subject_id: str | None = None,
    actor: str | None = None,
    after_seq: int = 0,
    newest_first: bool = False,
    limit: int = 100,
    families: bool = True,
) -> list[dict[str, Any]]:
    """One page of the org's audit events; with `families`, a `kind` ending in '.' or '*' matches a family
    (e.g. 'policy.'); without, `kind` matches exactly."""
    query = AuditEvent.select().where((AuditEvent.org_id == str(org_id)) & (AuditEvent.seq > after_seq))
    if kind:
        family = kind.rstrip("*")
        query = query.where(
            AuditEvent.kind.like(family + "%") if families and kind.endswith(("*", ".")) else AuditEvent.kind == kind
        )
    if subject_id:
        query = query.where(AuditEvent.subject_id == subject_id)
    if actor:
        # SQLite's LIKE already ignores ASCII case (and Piccolo warns on its ILIKE).
        sqlite = AuditEvent._meta.db.engine_type == "sqlite"
        column = AuditEvent.actor_label
        query = query.where(column.like(f"%{actor}%") if sqlite else column.ilike(f"%{actor}%"))
    rows = await query.order_by(AuditEvent.seq, ascending=not newest_first).limit(limit).output(load_json=True)
    return [{**row, "id": str(row["id"])} for row in rows]
