"""Notification deliveries: queue one row per (request, recipient, channel, event), deliver each as a job.

At-least-once: every row becomes the arq job `notify:<delivery id>` after the request's
transaction commits, and a sweep re-queues rows left behind (Redis lost, worker killed). A row is
claimed with a lease before sending, so a retry never sends again to a channel that already
accepted; a failing channel only retries its own rows, with exponential backoff up to a cap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from piccolo.query.functions.aggregate import Count

from backend import db
from backend.accounts.tables import User
from backend.approvals.tables import ApprovalRequest
from backend.audit.service import Actor, record
from backend.bus import Bus
from backend.effects import Effects
from backend.events import event_message
from backend.notifications import channel_settings, preferences
from backend.notifications.batching import Batch, keyed
from backend.notifications.channels import CHAT_KINDS, ChannelError, Recipient, Target, get_channel
from backend.notifications.compose import compose, request_facts
from backend.notifications.tables import NotificationAttempt, NotificationDelivery
from backend.observability import metrics
from backend.redis_conn import pipelined
from backend.transactions import is_sqlite, lock, write_transaction

if TYPE_CHECKING:
    from arq.connections import ArqRedis
    from redis.asyncio.client import Pipeline

    from backend.hub import Hub

logger = logging.getLogger("preloop.notifications")

QUEUED_TOPIC = "notifications:queued"
"""Bus topic announcing new deliveries; each message names the request and its new rows."""
JOB = "deliver_notification"
LEASE_MARGIN = 5.0
"""A claimed row is taken over this long after its send timeout if its worker vanished."""
SWEEP_GRACE = timedelta(seconds=10)
"""A queued row younger than this still has its own job on the way; the sweep leaves it alone."""
SWEEP_BATCH = 1000
ACTIONABLE = frozenset({"requested", "escalated", "reminder"})
FINAL = frozenset({"sent", "failed", "skipped"})
PERSONAL_EXEMPT = frozenset({"web"} | CHAT_KINDS)
"""Channels one person's preferences and quiet hours do not hold (chat posts to a shared channel)."""


def now() -> datetime:
    return datetime.now(UTC)


def dedupe_key(request_id: Any, user_id: Any, channel: str, event: str) -> str:
    return f"{request_id}:{user_id}:{channel}:{event}"


def event_name(level: int) -> str:
    return "requested" if level == 0 else f"escalated:{level}"


def job_id(delivery_id: Any) -> str:
    return f"notify:{delivery_id}"


# --- queueing (inside the request's transaction) ----------------------------------------------


async def queue_deliveries(
    org_id: uuid.UUID | str,
    request: dict[str, Any],
    approvers: Iterable[tuple[Any, str]],
    channels: Iterable[str],
    *,
    level: int,
    event: str | None = None,
) -> list[dict[str, Any]]:
    """Insert a `queued` row per (recipient, channel); a row queued before is left alone.

    Runs inside the caller's transaction, so a rolled-back request leaves no deliveries behind.
    Returns the rows that are new.
    """
    event = event or event_name(level)
    channel_list = list(dict.fromkeys(channels))
    approvers_list = list(approvers)
    payload = _payload_of(request, level)
    stamp = now()

    def row(user_id: Any, email: str, channel: str, recipient: Any) -> NotificationDelivery:
        return NotificationDelivery(
            id=uuid.uuid4(),
            org=org_id,
            request=request["id"],
            user=user_id,
            channel=channel,
            dedupe_key=dedupe_key(request["id"], recipient, channel, event),
            escalation_level=level,
            status="queued",
            payload={**payload, "email": email, **({"recipient": "channel"} if recipient == "channel" else {})},
            created_at=stamp,
            event=event,
        )

    rows = [
        row(user_id, email, channel, user_id)
        for user_id, email in approvers_list
        for channel in channel_list
        if channel not in CHAT_KINDS
    ]
    people = sorted(approvers_list, key=lambda p: str(p[0]))
    if people:  # a chat channel gets one message per request, in the channel, not one per approver
        rows += [
            row(people[0][0], people[0][1], channel, "channel") for channel in channel_list if channel in CHAT_KINDS
        ]
    if not rows:
        return []
    inserted = await (
        NotificationDelivery.insert(*rows)
        .on_conflict(target=NotificationDelivery.dedupe_key, action="DO NOTHING")
        .returning(NotificationDelivery.id, NotificationDelivery.user, NotificationDelivery.channel)
    )
    return _created(inserted)


def _payload_of(request: dict[str, Any], level: int) -> dict[str, Any]:
    """What every delivery row about `request` carries, before its recipient's email."""
    return {
        "request_id": str(request["id"]),
        "tool": request["tool"],
        "server": request.get("server", ""),
        "agent": request.get("agent_name", ""),
        "risk": request.get("risk"),
        "justification": request.get("justification"),
        "escalation_level": level,
    }


async def notified_so_far(request_id: Any) -> dict[tuple[str, str], str]:
    """(user id, channel) → email of everyone a message about this request went (or is going) to."""
    rows = await NotificationDelivery.select(
        NotificationDelivery.user, NotificationDelivery.channel, NotificationDelivery.user.email.as_alias("email")
    ).where(
        (NotificationDelivery.request == request_id)
        & (NotificationDelivery.status.is_in(["sent", "sending", "queued"]))
        & (NotificationDelivery.event.not_like("outcome%"))
    )
    return {(str(r["user"]), r["channel"]): r["email"] for r in rows}


async def queue_outcome(org_id: Any, request: dict[str, Any]) -> list[dict[str, Any]]:
    """The outcome, on each channel, to everyone who was told about the request on it."""
    if not is_sqlite():
        return await _queue_outcome_in_sql(org_id, request)
    by_channel: dict[str, list[tuple[str, str]]] = {}
    for (user_id, channel), email in (await notified_so_far(request["id"])).items():
        by_channel.setdefault(channel, []).append((user_id, email))
    created: list[dict[str, Any]] = []
    level = int(request.get("escalation_level") or 0)
    for channel, people in by_channel.items():
        created += await queue_deliveries(
            org_id, request, people, [channel], level=level, event=f"outcome:{request['status']}"
        )
    return created


# Both fan-outs below choose `picked("user", channel, chat)` and end in this insert: the rows, dedupe keys
# and payloads `queue_deliveries` makes (a chat channel: one row, for its lowest user id).
_INSERT_PICKED = """
INSERT INTO notification_delivery (id, org, request, "user", channel, dedupe_key, escalation_level, status,
                                   attempts, last_error, payload, created_at, sent_at, event, next_attempt_at,
                                   claimed_until)
SELECT gen_random_uuid(), {}, {}, p."user", p.channel,
       {} || ':' || CASE WHEN p.chat THEN 'channel' ELSE p."user"::text END || ':' || p.channel || ':' || {},
       {}, 'queued', 0, NULL,
       {}::jsonb || jsonb_build_object('email', u.email)
           || CASE WHEN p.chat THEN jsonb_build_object('recipient', 'channel') ELSE jsonb_build_object() END,
       {}, NULL, {}, NULL, NULL
FROM picked p LEFT JOIN app_user u ON u.id = p."user"
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING id, "user", channel
"""

_OUTCOME_SQL = """
WITH told AS (
    SELECT d."user", d.channel FROM notification_delivery d
    WHERE d.request = {} AND d.status IN ('sent', 'sending', 'queued') AND d.event NOT LIKE 'outcome%'
    GROUP BY d."user", d.channel
), picked AS (
    SELECT "user", channel, false AS chat FROM told WHERE NOT (channel = ANY({}::text[]))
    UNION ALL
    SELECT (array_agg("user" ORDER BY "user"))[1], channel, true FROM told
    WHERE channel = ANY({}::text[]) GROUP BY channel
)""" + _INSERT_PICKED

_ELIGIBLE_CTES = """
people AS (
    SELECT u.id AS "user" FROM app_user u
    WHERE u.org = {} AND u.email = ANY({}::text[]) AND u.is_active
    UNION
    SELECT u.id FROM team_membership m JOIN team t ON t.id = m.team JOIN app_user u ON u.id = m."user"
    WHERE t.org = {} AND t.name = ANY({}::text[]) AND u.is_active AND u.org = {}
), eligible AS (
    SELECT "user" FROM people WHERE "user"::text <> {} /*after*/
)"""
"""Who may vote on a request now, and so who is asked: the active users of the org named by `emails` or
members of `teams`, the requester excepted. The one definition on PostgreSQL, for the fan-out and for
`approvals.flows.eligible_users` alike; the arguments are `_people_args`."""
_REQUESTED_CTES = _ELIGIBLE_CTES + """, picked AS (
    SELECT e."user", c.channel, false AS chat FROM eligible e CROSS JOIN unnest({}::text[]) AS c(channel)
    UNION ALL
    SELECT f."user", c.channel, true FROM (SELECT "user" FROM eligible ORDER BY "user" LIMIT 1) f
    CROSS JOIN unnest({}::text[]) AS c(channel)
)"""
_REQUESTED_SQL = "WITH " + _REQUESTED_CTES.replace("/*after*/", "") + _INSERT_PICKED
_ELIGIBLE_SQL = (
    "WITH " + _ELIGIBLE_CTES.replace("/*after*/", "")
    + ' SELECT e."user" AS id, u.email FROM eligible e JOIN app_user u ON u.id = e."user"'
)


def _people_args(org_id: Any, request: dict[str, Any], emails: list[str], teams: list[str]) -> list[Any]:
    return [org_id, emails, org_id, teams, org_id, str(request.get("requester") or "")]


def eligible_ctes_sql(
    org_id: Any, request: dict[str, Any], emails: list[str], teams: list[str]
) -> tuple[str, list[Any]]:
    """PostgreSQL: `_ELIGIBLE_CTES` (`people`, `eligible`: who may vote now) to open another statement with,
    and their arguments (Piccolo `raw()`'s `{}`, in order)."""
    return _ELIGIBLE_CTES.replace("/*after*/", ""), _people_args(org_id, request, emails, teams)


async def eligible_in_sql(org_id: Any, request: dict[str, Any], emails: list[str], teams: list[str]) -> dict[str, str]:
    """PostgreSQL: user id -> email of everyone `_ELIGIBLE_CTES` names, in one prepared statement."""
    rows = await db.fetch(_ELIGIBLE_SQL, *_people_args(org_id, request, emails, teams))
    return {str(row["id"]): row["email"] for row in rows}


def _tail_args(org_id: Any, request: dict[str, Any], event: str, level: int) -> list[Any]:
    payload = json.dumps(_payload_of(request, level), default=str)
    return [org_id, request["id"], str(request["id"]), event, level, payload, now(), event]


def _created(inserted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": str(row["id"]), "user_id": str(row["user"]), "channel": row["channel"]} for row in inserted]


async def _queue_outcome_in_sql(org_id: Any, request: dict[str, Any]) -> list[dict[str, Any]]:
    """PostgreSQL: `queue_outcome` as one statement (who was told, on which channel, and their rows)."""
    level = int(request.get("escalation_level") or 0)
    chat = sorted(CHAT_KINDS)
    tail = _tail_args(org_id, request, f"outcome:{request['status']}", level)
    return _created(await db.fetch(_OUTCOME_SQL, request["id"], chat, chat, *tail))


def outcome_after_sql(after: str) -> tuple[str, list[Any]]:
    """PostgreSQL: CTEs (`told`, `picked`, `delivered`) that queue `queue_outcome`'s rows inside the statement
    they join, for the request `after` returns (already in its new status; nothing when it returns no row).
    The payload is `_payload_of` built from the row (a test proves the two agree); `delivered` returns
    `id, "user", channel` as `_created` reads them. Placeholders are Piccolo `raw()`'s `{}`, in order."""
    chat = sorted(CHAT_KINDS)
    sql = f"""told AS (
    SELECT d."user", d.channel FROM notification_delivery d JOIN {after} s ON d.request = s.id
    WHERE d.status IN ('sent', 'sending', 'queued') AND d.event NOT LIKE 'outcome%'
    GROUP BY d."user", d.channel
), picked AS (
    SELECT "user", channel, false AS chat FROM told WHERE NOT (channel = ANY({{}}::text[]))
    UNION ALL
    SELECT (array_agg("user" ORDER BY "user"))[1], channel, true FROM told
    WHERE channel = ANY({{}}::text[]) GROUP BY channel
), delivered AS (
    INSERT INTO notification_delivery (id, org, request, "user", channel, dedupe_key, escalation_level, status,
                                       attempts, last_error, payload, created_at, sent_at, event, next_attempt_at,
                                       claimed_until)
    SELECT gen_random_uuid(), s.org, s.id, p."user", p.channel,
           s.id::text || ':' || CASE WHEN p.chat THEN 'channel' ELSE p."user"::text END || ':' || p.channel
               || ':outcome:' || s.status,
           s.escalation_level, 'queued', 0, NULL,
           jsonb_build_object('request_id', s.id::text, 'tool', s.tool, 'server', s.server, 'agent', s.agent_name,
                              'risk', s.risk, 'justification', s.justification,
                              'escalation_level', s.escalation_level)
               || jsonb_build_object('email', u.email)
               || CASE WHEN p.chat THEN jsonb_build_object('recipient', 'channel') ELSE jsonb_build_object() END,
           {{}}::timestamptz, NULL, 'outcome:' || s.status, NULL, NULL
    FROM picked p CROSS JOIN {after} s LEFT JOIN app_user u ON u.id = p."user"
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING id, "user", channel
)"""
    return sql, [chat, chat, now()]


def created_from_json(value: Any) -> list[dict[str, Any]]:
    """`_created` of rows a statement returned as a JSON array (`outcome_after_sql`'s `delivered`)."""
    rows = json.loads(value) if isinstance(value, str) else (value or [])
    return _created(rows)


async def queue_to_eligible_in_sql(
    org_id: Any, request: dict[str, Any], emails: list[str], teams: list[str], channels: Iterable[str], *, level: int
) -> list[dict[str, Any]]:
    """PostgreSQL: `queue_deliveries` to the active users named by `emails` or members of `teams`, the
    requester excepted (who `approvals.flows.eligible_users` finds), in one statement."""
    args = _eligible_args(org_id, request, emails, teams, channels, level=level)
    return _created(await db.fetch(_REQUESTED_SQL, *args))


def _eligible_args(
    org_id: Any, request: dict[str, Any], emails: list[str], teams: list[str], channels: Iterable[str], *, level: int
) -> list[Any]:
    channel_list = list(dict.fromkeys(channels))
    plain = [c for c in channel_list if c not in CHAT_KINDS]
    chat = [c for c in channel_list if c in CHAT_KINDS]
    tail = _tail_args(org_id, request, event_name(level), level)
    return [*_people_args(org_id, request, emails, teams), plain, chat, *tail]


def eligible_cte_sql(
    org_id: Any, request: dict[str, Any], emails: list[str], teams: list[str], channels: Iterable[str], *,
    level: int, after: str,
) -> tuple[str, list[Any]]:
    """PostgreSQL: `queue_to_eligible_in_sql` as CTEs (`people`, `eligible`, `picked`, `delivered`) inside the
    statement they join (the one that inserts the request, the CTE `after`: nothing is queued when it
    returns no row); `delivered` returns `id, "user", channel`."""
    ctes = _REQUESTED_CTES.replace("/*after*/", f"AND EXISTS (SELECT 1 FROM {after})")
    sql = ctes + ", delivered AS (" + _INSERT_PICKED + ")"
    return sql, _eligible_args(org_id, request, emails, teams, channels, level=level)


_ENQUEUE_SCRIPT = """
if redis.call('exists', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('psetex', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
return 1
"""
"""arq's own enqueue (WATCH/MULTI per job), made atomic per job by a script so many go in one pipeline."""
ENQUEUE_BATCH = 500


async def enqueue_jobs(hub: Effects, jobs: list[tuple[str, str]]) -> int:
    """Queue `(delivery id, job id)` pairs as arq jobs in one Redis round trip per 500.

    Same keys and semantics as `ArqRedis.enqueue_job`: a job id that already has a job or a result
    is left alone, so a repeat is harmless. A failure is logged, never raised: the sweep re-queues.
    Returns how many were new.
    """
    return await enqueue_many(hub, [(JOB, (delivery_id,), jid, None) for delivery_id, jid in jobs])


def _job_commands(
    pool: ArqRedis, jobs: list[tuple[str, tuple[Any, ...], str, datetime | None]], stamp: int
) -> Callable[[Pipeline], int]:
    """What `enqueue_many` puts on a pipeline for `jobs`: `ArqRedis.enqueue_job`'s keys, scores and expiries."""
    from arq.constants import default_queue_name, job_key_prefix, result_key_prefix
    from arq.jobs import serialize_job
    from arq.utils import to_unix_ms

    queue = pool.default_queue_name or default_queue_name

    def add(pipe: Pipeline) -> int:
        for function, args, jid, defer_until in jobs:
            score = to_unix_ms(defer_until) if defer_until is not None else stamp
            body = serialize_job(function, args, {}, None, stamp, serializer=pool.job_serializer)
            keys_and_args: list[Any] = [
                job_key_prefix + jid,
                result_key_prefix + jid,
                queue,
                score - stamp + pool.expires_extra_ms,
                body,
                score,
                jid,
            ]
            pipe.eval(_ENQUEUE_SCRIPT, 3, *keys_and_args)
        return len(jobs)

    return add


async def enqueue_many(hub: Effects, jobs: list[tuple[str, tuple[Any, ...], str, datetime | None]]) -> int:
    """Queue `(function, args, job id, defer until)` arq jobs in one pipeline per 500, each atomic by
    script, with `ArqRedis.enqueue_job`'s keys, scores and expiries (it costs three round trips a job), sent with
    the jobs and bus messages other requests queue meanwhile (`redis_conn.Pipelined`).

    A job id that already has a job or a result is left alone. A failure is logged, never raised: the
    sweeps are the backstop. Returns how many were new.
    """
    pool = hub.jobs
    if pool is None or not jobs:
        return 0
    from arq.utils import timestamp_ms

    added = 0
    try:
        for start in range(0, len(jobs), ENQUEUE_BATCH):
            add = _job_commands(pool, jobs[start : start + ENQUEUE_BATCH], timestamp_ms())
            added += sum(int(r) for r in await pipelined(pool).run(add))
    except Exception:
        logger.exception("could not queue jobs; the sweeps will catch them", extra={"jobs": len(jobs)})
    return added


async def enqueue(hub: Effects, deliveries: list[dict[str, Any]]) -> None:
    """Give each row its job (after commit) in one pipeline; the fixed ids make a repeat harmless."""
    await enqueue_jobs(hub, [(d["id"], job_id(d["id"])) for d in deliveries])


async def announce(
    bus: Bus, org_id: uuid.UUID | str, request_id: Any, deliveries: list[dict[str, Any]], *, level: int
) -> None:
    """Tell consoles/PWAs that people are being notified."""
    if not deliveries:
        return
    message = {
        "org_id": str(org_id),
        "request_id": str(request_id),
        "escalation_level": level,
        "delivery_ids": [d["id"] for d in deliveries],
    }
    await bus.publish_many(  # both messages in one PUBLISH
        [
            (QUEUED_TOPIC, message),
            event_message(
                org_id,
                "notifications.queued",
                {
                    "request_id": str(request_id),
                    "escalation_level": level,
                    "deliveries": len(deliveries),
                    "channels": sorted({d["channel"] for d in deliveries}),
                    "user_ids": sorted({d["user_id"] for d in deliveries}),
                },
            ),
        ]
    )


# --- delivering (one job per row) ---------------------------------------------------------------


def backoff(hub: Hub, attempts: int) -> float:
    conf = hub.settings.notifications
    return float(min(conf.backoff_cap_seconds, conf.backoff_seconds * (2 ** max(0, attempts - 1))))


async def _claim_many(items: list[tuple[str, float]]) -> list[dict[str, Any] | None]:
    """Claim many rows in one conditional UPDATE: each comes back only if it was free and due."""
    stamp = now()
    due = NotificationDelivery.next_attempt_at.is_null() | (NotificationDelivery.next_attempt_at <= stamp)
    free = (NotificationDelivery.status == "queued") | (
        (NotificationDelivery.status == "sending") & (NotificationDelivery.claimed_until < stamp)
    )
    claimed: dict[str, dict[str, Any]] = {}
    for lease_seconds in sorted({lease for _, lease in items}):  # one lease per worker in practice
        ids = list(dict.fromkeys(delivery_id for delivery_id, lease in items if lease == lease_seconds))
        rows = await (
            NotificationDelivery.update(
                {
                    NotificationDelivery.status: "sending",
                    NotificationDelivery.claimed_until: stamp + timedelta(seconds=lease_seconds),
                    NotificationDelivery.attempts: NotificationDelivery.attempts + 1,
                }
            )
            .where(NotificationDelivery.id.is_in(ids) & free & due)
            .returning(*NotificationDelivery.all_columns())
        )
        claimed.update((str(row["id"]), row) for row in rows)
    # A job id repeated in one batch (two jobs for one row) is claimed once: only the first gets it.
    return [claimed.pop(delivery_id, None) for delivery_id, _ in items]


_CLAIMS: Batch[tuple[str, float], dict[str, Any] | None] = Batch(_claim_many)


async def _claim(delivery_id: Any, lease_seconds: float) -> dict[str, Any] | None:
    """`queued` (or `sending` with an expired lease) → `sending`; None if another took it or it is not due."""
    return await _CLAIMS.ask((str(delivery_id), lease_seconds))


FAN_OUT_CACHE_SECONDS = 1.0
"""A fan-out sends the same request to hundreds of people within a second: read it once. Only
asks (requested/escalated/reminder) use it; an outcome always reads the decided row."""


class _FanOutCache:
    """Values read once per `FAN_OUT_CACHE_SECONDS` and shared by concurrent jobs.

    The read itself is shared too: the fifty jobs a worker starts at once for one fan-out wait on
    the first one's query instead of each sending their own (a cold cache would otherwise miss
    fifty times). A failed read is not kept.
    """

    def __init__(self) -> None:
        self.entries: dict[Any, tuple[float, asyncio.Future[Any]]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    async def get(self, key: Any, load: Callable[[], Awaitable[Any]], *, fresh: bool = False) -> Any:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # futures belong to one loop (tests run many)
            self.entries.clear()
            self.loop = loop
        clock = loop.time()
        hit = self.entries.get(key)
        if not fresh and hit is not None and clock - hit[0] < FAN_OUT_CACHE_SECONDS:
            return await asyncio.shield(hit[1])
        if len(self.entries) > 1000:
            self.entries.clear()
        task: asyncio.Future[Any] = loop.create_task(load())  # type: ignore[arg-type]
        self.entries[key] = (clock, task)

        def forget(done: asyncio.Future[Any]) -> None:
            failed = done.cancelled() or done.exception() is not None
            if failed and self.entries.get(key, (0.0, None))[1] is done:
                del self.entries[key]

        task.add_done_callback(forget)
        return await asyncio.shield(task)


_VIEWS = _FanOutCache()
_SETTINGS = _FanOutCache()


async def _load_request(request_id: Any) -> dict[str, Any] | None:
    row = await ApprovalRequest.select().where(ApprovalRequest.id == request_id).output(load_json=True).first()
    if row is not None:
        row["_facts"] = await request_facts(row)
    return row


async def _request_view(request_id: Any, *, cached: bool) -> dict[str, Any] | None:
    row: dict[str, Any] | None = await _VIEWS.get(str(request_id), lambda: _load_request(request_id), fresh=not cached)
    return row


async def _settings_view(hub: Hub, org_id: Any, kind: str) -> channel_settings.Resolved:
    """An organization's channel settings, read once per fan-out second."""
    resolved: channel_settings.Resolved = await _SETTINGS.get(
        (str(org_id), kind), lambda: channel_settings.resolve(hub, org_id, kind)
    )
    return resolved


async def _people(user_ids: list[str]) -> dict[str, tuple[dict[str, Any] | None, preferences.Preference]]:
    """Many recipients and their preferences: two queries for a batch of concurrent jobs."""
    users, prefs = await asyncio.gather(
        User.select(User.id, User.email, User.name, User.is_active).where(User.id.is_in(user_ids)),
        preferences.get_many(user_ids),
    )
    by_id = {str(u["id"]): u for u in users}
    return {uid: (by_id.get(uid), prefs.get(uid, preferences.DEFAULT)) for uid in user_ids}


_PEOPLE: Batch[str, tuple[dict[str, Any] | None, preferences.Preference]] = Batch(
    keyed(_people, (None, preferences.DEFAULT))
)


def _target(hub: Hub, user: dict[str, Any], settings: channel_settings.Resolved) -> Target:
    return Target(
        recipient=Recipient(str(user["id"]), user["email"], user["name"] or ""),
        config=settings.config,
        secret=settings.secret,
        hub=hub,
        public_url=hub.settings.server.base_url,
    )


def _payload(delivery: dict[str, Any]) -> dict[str, Any]:
    payload = delivery.get("payload") or {}
    return json.loads(payload) if isinstance(payload, str) else dict(payload)


async def _mark_many(items: list[tuple[str, str, str | None, datetime | None]]) -> list[datetime | None]:
    """Record many attempts' outcomes on their rows; rows with the same outcome share one UPDATE.

    Called right after each channel answers: the less time between a channel accepting and the
    row saying so, the smaller the window in which a killed worker causes a repeat. Returns each
    row's `sent_at` (None unless sent).
    """
    stamp = now()
    groups: dict[tuple[str, str | None, datetime | None], list[str]] = {}
    for delivery_id, status, error, next_attempt_at in items:
        groups.setdefault((status, error, next_attempt_at), []).append(delivery_id)
    for (status, error, next_attempt_at), ids in groups.items():
        await NotificationDelivery.update(
            {
                NotificationDelivery.status: status,
                NotificationDelivery.last_error: error,
                NotificationDelivery.sent_at: stamp if status == "sent" else None,
                NotificationDelivery.next_attempt_at: next_attempt_at,
                NotificationDelivery.claimed_until: None,
            }
        ).where(NotificationDelivery.id.is_in(ids))
    return [stamp if status == "sent" else None for _, status, _, _ in items]


_MARKS: Batch[tuple[str, str, str | None, datetime | None], datetime | None] = Batch(_mark_many, window=0.002)


async def _finish(
    delivery: dict[str, Any],
    status: str,
    *,
    started: datetime,
    error: str | None = None,
    detail: str | None = None,
    next_attempt_at: datetime | None = None,
) -> None:
    sent_at = await _MARKS.ask((str(delivery["id"]), status, error, next_attempt_at))
    attempt = ("retrying" if error else "deferred") if status == "queued" else status
    metrics.record_delivery(str(delivery["channel"]), attempt)
    await _record_attempt(delivery, attempt, started=started, sent_at=sent_at, error=error, detail=detail)


@dataclass
class _AttemptRecord:
    delivery: dict[str, Any]
    status: str
    started: datetime
    sent_at: datetime | None
    error: str | None
    detail: str | None


GROUP_WINDOW = 0.01
"""How long the first finished job waits for others to share its transaction."""


async def _write_attempts_batch(items: list[_AttemptRecord]) -> list[None]:
    await _write_attempts(items)
    return [None] * len(items)


_ATTEMPTS: Batch[_AttemptRecord, None] = Batch(_write_attempts_batch, window=GROUP_WINDOW)
"""Attempt rows and audit events of many concurrent jobs, written in one transaction: a fan-out
finishes hundreds of deliveries at once, and one transaction each would queue them all on the
organization's audit-chain lock. Each job still waits until its own record is committed."""


async def _record_attempt(
    delivery: dict[str, Any],
    status: str,
    *,
    started: datetime,
    sent_at: datetime | None,
    error: str | None = None,
    detail: str | None = None,
) -> None:
    """The attempt's row, and for an accepted delivery its audit event (who, how, when)."""
    await _ATTEMPTS.ask(_AttemptRecord(delivery, status, started, sent_at, error, detail))


async def _write_attempts(items: list[_AttemptRecord]) -> None:
    async with write_transaction():
        sent_ids = sorted({str(i.delivery["id"]) for i in items if i.status == "sent"})
        if sent_ids:  # the sending worker and a recovering sweep may race to write one: write it once
            await lock("notification-attempts")
        already: set[str] = set()
        if sent_ids:
            found = await NotificationAttempt.select(NotificationAttempt.delivery).where(
                (NotificationAttempt.delivery.is_in(sent_ids)) & (NotificationAttempt.status == "sent")
            )
            already = {str(r["delivery"]) for r in found}
        rows = []
        for item in items:
            delivery = item.delivery
            if item.status == "sent":
                if str(delivery["id"]) in already:
                    continue
                already.add(str(delivery["id"]))
            rows.append(
                NotificationAttempt(
                    id=uuid.uuid4(),
                    delivery=delivery["id"],
                    number=int(delivery["attempts"]),
                    status=item.status,
                    error=item.error,
                    detail=item.detail,
                    started_at=item.started,
                    sent_at=item.sent_at,
                )
            )
            if item.status == "sent":
                assert item.sent_at is not None
                await record(
                    delivery["org"],
                    "notification.delivered",
                    Actor.system("notifications"),
                    subject_type="notification",
                    subject_id=delivery["id"],
                    data={
                        "request_id": str(delivery["request"]),
                        "user_id": str(delivery["user"]),
                        "email": _payload(delivery).get("email"),
                        "channel": delivery["channel"],
                        "event": delivery["event"],
                        "attempt": int(delivery["attempts"]),
                        "sent_at": item.sent_at.isoformat(),
                        "answer": (item.detail or "")[:200],
                    },
                )
        if rows:
            await NotificationAttempt.insert(*rows)


async def record_unrecorded(batch: int = 500) -> int:
    """Sent rows whose worker died before writing the attempt and audit event: write them now."""
    recorded = NotificationAttempt.select(NotificationAttempt.delivery).where(NotificationAttempt.status == "sent")
    rows = (
        await NotificationDelivery.select()
        .where(
            (NotificationDelivery.status == "sent")
            & (NotificationDelivery.sent_at <= now() - SWEEP_GRACE)
            & NotificationDelivery.id.not_in(recorded)
        )
        .limit(batch)
    )
    for row in rows:
        await _record_attempt(
            row,
            "sent",
            started=row["sent_at"],
            sent_at=row["sent_at"],
            detail="recorded after a worker restart",
        )
    return len(rows)


async def deliver(hub: Hub, delivery_id: Any) -> float | None:
    """Send one delivery if it is still owed; returns seconds until it should be tried again, or None."""
    send_timeout = hub.settings.notifications.send_timeout_seconds
    delivery = await _claim(delivery_id, send_timeout + LEASE_MARGIN)
    if delivery is None:
        row = await NotificationDelivery.select().where(NotificationDelivery.id == delivery_id).first()
        if row is None or row["status"] in FINAL:
            return None
        stamp = now()
        if row["status"] == "sending" and row["claimed_until"] is not None:
            return max(0.1, float((row["claimed_until"] - stamp).total_seconds()) + 0.1)
        if row["next_attempt_at"] is not None and row["next_attempt_at"] > stamp:
            return max(0.1, float((row["next_attempt_at"] - stamp).total_seconds()))
        return None
    started = now()
    kind = str(delivery["event"]).split(":", 1)[0]
    # Independent reads, in flight together: one round trip of waiting instead of three.
    request, person = await asyncio.gather(
        _request_view(delivery["request"], cached=kind in ACTIONABLE), _PEOPLE.ask(str(delivery["user"]))
    )
    user, pref = person
    assert isinstance(pref, preferences.Preference)
    channel = get_channel(delivery["channel"])
    skip: str | None = None
    if request is None or user is None or not user["is_active"]:
        skip = "the request or the person no longer exists or is inactive"
    elif channel is None:
        skip = f"this hub has no {delivery['channel']} channel"
    elif kind in ACTIONABLE and request["status"] != "pending":
        skip = f"the request was already {request['status']} when this message was due"
    if skip is None:
        assert request is not None
        assert user is not None
        settings = await _settings_view(hub, delivery["org"], delivery["channel"])
        if not settings.enabled:
            skip = f"the {delivery['channel']} channel is turned off for this organization"
        elif delivery["channel"] not in PERSONAL_EXEMPT and not pref.wants(delivery["channel"]):
            skip = f"{user['email']} turned {delivery['channel']} notifications off"
        elif delivery["channel"] not in PERSONAL_EXEMPT and request.get("risk") != "critical":
            until = pref.quiet_until(started)
            if until is not None:
                await _finish(
                    delivery,
                    "queued",
                    started=started,
                    detail=f"quiet hours until {until.isoformat()}",
                    next_attempt_at=until,
                )
                return max(0.1, (until - now()).total_seconds())
    if skip is not None:
        await _finish(delivery, "skipped", started=started, detail=skip)
        return None
    assert request is not None
    assert user is not None
    assert channel is not None
    base_url = hub.settings.server.base_url
    target = _target(hub, user, settings)
    try:
        message = await compose(request, delivery, base_url, facts=request.get("_facts"))
        answer = await asyncio.wait_for(channel.send(message, target), timeout=send_timeout)
    except (ChannelError, TimeoutError) as exc:
        permanent = isinstance(exc, ChannelError) and exc.permanent
        error = str(exc) or f"no answer within {send_timeout:g}s"
    except Exception as exc:  # a channel bug must not lose the delivery: retry it like a failure
        logger.exception("channel raised unexpectedly", extra={"channel": delivery["channel"]})
        permanent, error = False, f"{type(exc).__name__}: {exc}"
    else:
        await _finish(delivery, "skipped" if answer.skipped else "sent", started=started, detail=answer.detail)
        return None
    attempts = int(delivery["attempts"])
    if permanent or attempts >= hub.settings.notifications.max_attempts:
        await _finish(delivery, "failed", started=started, error=error)
        logger.warning("delivery failed for good", extra={"delivery": str(delivery["id"]), "error": error})
        return None
    wait = backoff(hub, attempts)
    await _finish(delivery, "queued", started=started, error=error, next_attempt_at=now() + timedelta(seconds=wait))
    return wait


async def sweep(hub: Hub) -> int:
    """Re-queue rows whose job was lost: queued and due, or claimed by a worker that vanished.

    The job id is `notify:<id>:<attempts>`, not `notify:<id>`: a killed worker's own job keeps its
    id reserved in arq until arq's in-progress timeout, and the row's claim already makes two jobs
    for one row harmless.
    """
    stamp = now()
    settled_before = stamp - SWEEP_GRACE
    due = (
        (NotificationDelivery.status == "queued")
        & (NotificationDelivery.created_at <= settled_before)
        & (NotificationDelivery.next_attempt_at.is_null() | (NotificationDelivery.next_attempt_at <= settled_before))
    ) | ((NotificationDelivery.status == "sending") & (NotificationDelivery.claimed_until < stamp))
    rows = (
        await NotificationDelivery.select(NotificationDelivery.id, NotificationDelivery.attempts)
        .where(due)
        .limit(SWEEP_BATCH)
    )
    await enqueue_jobs(hub, [(str(r["id"]), f"{job_id(r['id'])}:{r['attempts']}") for r in rows])
    return len(rows) + await record_unrecorded()


# --- reading ------------------------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else (str(value) if value is not None else None)


def _attempt_view(a: dict[str, Any]) -> dict[str, Any]:
    """One attempt as the API shows it."""
    return {
        "number": a["number"],
        "status": a["status"],
        "error": a["error"],
        "detail": a["detail"],
        "started_at": _iso(a["started_at"]),
        "sent_at": _iso(a["sent_at"]),
    }


async def deliveries_for(request_id: uuid.UUID | str, *, with_attempts: bool = False) -> list[dict[str, Any]]:
    rows = (
        await NotificationDelivery.select(
            *NotificationDelivery.all_columns(), NotificationDelivery.user.email.as_alias("email")
        )
        .where(NotificationDelivery.request == request_id)
        .order_by(NotificationDelivery.created_at)
    )
    attempts: dict[str, list[dict[str, Any]]] = {}
    if with_attempts and rows:
        found = (
            await NotificationAttempt.select()
            .where(NotificationAttempt.delivery.is_in([r["id"] for r in rows]))
            .order_by(NotificationAttempt.started_at)
        )
        for a in found:
            attempts.setdefault(str(a["delivery"]), []).append(_attempt_view(a))
    out = []
    for row in rows:
        item = {
            "id": str(row["id"]),
            "user_id": str(row["user"]),
            "email": row["email"],
            "channel": row["channel"],
            "event": row["event"],
            "status": row["status"],
            "escalation_level": row["escalation_level"],
            "attempts": row["attempts"],
            "last_error": row["last_error"],
            "created_at": _iso(row["created_at"]),
            "sent_at": _iso(row["sent_at"]),
        }
        if with_attempts:
            item["history"] = attempts.get(str(row["id"]), [])
        out.append(item)
    return out


RECENT_WINDOW = timedelta(hours=24)
RECENT_MAX = 200
STATUSES = ("queued", "sending", "sent", "failed", "skipped")


async def channel_deliveries(principal: Any, kind: str, *, limit: int = 50) -> dict[str, Any]:
    """Recent deliveries on one channel of the caller's organization (the console's per-channel view).

    `counts`: deliveries created in the last 24 h by current status (every status present, 0 if
    none). `attempts`: the last `limit` attempts (1..200), newest first, each with its error.
    """
    from backend.errors import NotFound, ValidationFailed
    from backend.notifications.channels import known_kinds

    if kind not in known_kinds():
        raise NotFound(f"no channel kind {kind!r}; kinds: {', '.join(known_kinds())}")
    if not 1 <= limit <= RECENT_MAX:
        raise ValidationFailed(f"limit must be between 1 and {RECENT_MAX}, got {limit}", detail={"field": "limit"})
    org_id = principal.org_id
    since = now() - RECENT_WINDOW
    counted = await (
        NotificationDelivery.select(NotificationDelivery.status, Count(NotificationDelivery.id).as_alias("n"))
        .where(
            (NotificationDelivery.org == org_id)
            & (NotificationDelivery.channel == kind)
            & (NotificationDelivery.created_at >= since)
        )
        .group_by(NotificationDelivery.status)
    )
    counts = dict.fromkeys(STATUSES, 0)
    for row in counted:
        counts[str(row["status"])] = int(row["n"])
    of_org = NotificationDelivery.select(NotificationDelivery.id).where(
        (NotificationDelivery.org == org_id) & (NotificationDelivery.channel == kind)
    )
    attempts = (
        await NotificationAttempt.select(
            *NotificationAttempt.all_columns(),
            NotificationAttempt.delivery._.request.as_alias("request_id"),
            NotificationAttempt.delivery._.event.as_alias("event"),
            NotificationAttempt.delivery._.user._.email.as_alias("email"),
        )
        .where(NotificationAttempt.delivery.is_in(of_org))
        .order_by(NotificationAttempt.started_at, ascending=False)
        .limit(limit)
    )
    return {
        "kind": kind,
        "window_hours": int(RECENT_WINDOW.total_seconds() // 3600),
        "counts": counts,
        "attempts": [
            {
                "delivery_id": str(a["delivery"]),
                "request_id": str(a["request_id"]),
                "email": a["email"],
                "event": a["event"],
                **_attempt_view(a),
            }
            for a in attempts
        ],
    }


async def reminded_requests(request_ids: list[Any]) -> set[str]:
    """Which of these requests already had reminders queued."""
    rows = await NotificationDelivery.select(NotificationDelivery.request).where(
        (NotificationDelivery.request.is_in(request_ids)) & (NotificationDelivery.event == "reminder")
    )
    return {str(r["request"]) for r in rows}


async def deliveries_of_request(principal: Any, request_id: str) -> list[dict[str, Any]]:
    """Who was notified about a request, how and when, for people of its organization."""
    from backend.errors import Forbidden, NotFound

    if principal.via == "key" and principal.scope == "agent":
        raise Forbidden("agent keys cannot read who was notified; use an approver or admin key")
    try:
        rid = uuid.UUID(str(request_id))
    except ValueError:
        raise NotFound(f"no approval request {request_id!r}") from None
    exists = await ApprovalRequest.exists().where(
        (ApprovalRequest.id == rid) & (ApprovalRequest.org == principal.org_id)
    )
    if not exists:
        raise NotFound(f"no approval request {request_id!r}")
    return await deliveries_for(rid, with_attempts=True)


async def send_test(hub: Hub, principal: Any, kind: str) -> dict[str, Any]:
    """Send a sample message to the caller on one channel now; return what the channel answered."""
    from backend.errors import NotFound
    from backend.notifications.channels import Message

    channel = get_channel(kind)
    if channel is None or kind not in channel_settings.SETTABLE:
        raise NotFound(f"no channel kind {kind!r}; testable kinds: {', '.join(channel_settings.SETTABLE)}")
    user = await User.select(User.id, User.email, User.name).where(User.id == principal.user_id).first()
    assert user is not None
    settings = await channel_settings.resolve(hub, principal.org_id, kind)
    base_url = hub.settings.server.base_url
    stamp = now().isoformat()
    message = Message(
        delivery_id=f"test-{uuid.uuid4()}",
        event="test",
        request_id="test",
        status="test",
        tool="example_tool",
        server="example",
        arguments=[],
        agent="Preloop",
        owner=user["email"],
        created_at=stamp,
        rule="a test notification from the channel settings",
        risk=None,
        reason="",
        justification=None,
        deadline=None,
        deadline_epoch=None,
        votes_needed=0,
        quorum=1,
        link=f"{base_url}/app/",
        tag="preloop-test",
        title=f"Preloop test notification ({kind})",
        summary=f"{user['email']} asked for a test of the {kind} channel at {stamp}.",
        org_id=str(principal.org_id),
    )
    target = _target(hub, user, settings)
    try:
        answer = await asyncio.wait_for(
            channel.send(message, target), timeout=hub.settings.notifications.send_timeout_seconds
        )
    except ChannelError as exc:
        return {"kind": kind, "ok": False, "answer": str(exc), "recipient": user["email"]}
    except TimeoutError:
        return {"kind": kind, "ok": False, "answer": "no answer in time", "recipient": user["email"]}
    return {"kind": kind, "ok": not answer.skipped, "answer": answer.detail, "recipient": user["email"]}


async def channel_status(org_id: Any, kind: str, *, hours: int = 24, recent: int = 20) -> dict[str, Any]:
    """How one channel has been doing: deliveries by status over the last `hours`, and the newest
    `recent` attempts with what the channel answered (Grafana's contact-point view is the model)."""
    since = now() - timedelta(hours=hours)
    rows = await NotificationDelivery.select(NotificationDelivery.status).where(
        (NotificationDelivery.org == org_id) & (NotificationDelivery.channel == kind)
        & (NotificationDelivery.created_at >= since)
    )
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    attempts = (
        await NotificationAttempt.select(
            NotificationAttempt.number, NotificationAttempt.status, NotificationAttempt.error,
            NotificationAttempt.detail, NotificationAttempt.started_at,
            NotificationAttempt.delivery._.user._.email.as_alias("email"),
            NotificationAttempt.delivery.request.as_alias("request"),
            NotificationAttempt.delivery.event.as_alias("event"),
        )
        .where((NotificationAttempt.delivery.org == org_id) & (NotificationAttempt.delivery.channel == kind))
        .order_by(NotificationAttempt.started_at, ascending=False)
        .limit(recent)
    )
    return {
        "kind": kind,
        "hours": hours,
        "counts": dict(sorted(counts.items())),
        "attempts": [{**a, "request": str(a["request"]), "started_at": _iso(a["started_at"])} for a in attempts],
    }
