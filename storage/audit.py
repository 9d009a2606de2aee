"""The tamper-evident audit log: a hash chain with signed checkpoints.

Each entry holds the SHA-256 of the previous entry and its own, computed over
a canonical JSON encoding of every field (sequence number and tenant
included), so an edited, deleted, inserted, reordered or re-tenanted entry
breaks the chain. Appends lock one head row, so writers in any number of
processes extend one unbroken chain. Every ``checkpoint_every`` entries (or
``checkpoint_seconds``) the head is signed with an Ed25519 key kept wrapped
by the master key; exported checkpoints catch a truncated tail.

Details never hold secrets: callers pass identifiers and outcomes only.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select

from storage.db import unit_of_work
from storage.models import AuditCheckpoint, AuditEntry, AuditHead
from storage.secrets import server_secret

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from sqlalchemy.orm import Session, sessionmaker

    from storage.crypto.master import MasterKeyRing

GENESIS = "0" * 64
SIGNING_KEY_NAME = "audit-checkpoint-key"
HASHED_FIELDS = (
    "seq",
    "ts",
    "actor_subject",
    "actor_client_id",
    "tenant_id",
    "action",
    "resource",
    "outcome",
    "request_id",
    "client_addr",
    "details",
    "prev_hash",
)


@dataclass(frozen=True)
class Actor:
    """Who acted, and from where: what every audit entry says about its author."""

    subject: str | None = None
    client_id: str | None = None
    request_id: str | None = None
    client_addr: str | None = None


@dataclass(frozen=True)
class AuditEvent:
    """What happened, before it gets its place in the chain."""

    action: str
    resource: str
    outcome: str = "success"
    tenant_id: str | None = None
    actor: Actor = field(default_factory=Actor)
    details: dict[str, Any] = field(default_factory=dict)
    ts: datetime | None = None


@dataclass(frozen=True)
class VerifyResult:
    """The first problem found (``None`` fields when the log is intact)."""

    ok: bool
    entries: int
    first_bad_seq: int | None = None
    reason: str | None = None


def canonical(record: dict[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8: the one byte string an entry's hash covers."""
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False
    ).encode()


def entry_record(entry: AuditEntry) -> dict[str, Any]:
    """The hashed fields of an entry, as JSON values."""
    return {
        "seq": entry.seq,
        "ts": entry.ts.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor_subject": entry.actor_subject,
        "actor_client_id": entry.actor_client_id,
        "tenant_id": entry.tenant_id,
        "action": entry.action,
        "resource": entry.resource,
        "outcome": entry.outcome,
        "request_id": entry.request_id,
        "client_addr": entry.client_addr,
        "details": entry.details,
        "prev_hash": entry.prev_hash,
    }


def entry_hash(record: dict[str, Any]) -> str:
    """SHA-256 of the canonical encoding of ``record``'s hashed fields."""
    return hashlib.sha256(canonical({k: record[k] for k in HASHED_FIELDS})).hexdigest()


def _checkpoint_message(seq: int, digest: str) -> bytes:
    return f"sealserve-audit-checkpoint:{seq}:{digest}".encode()


class AuditLog:
    """Appends, reads, exports and verifies the audit log."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        master_keys: MasterKeyRing,
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 300.0,
    ) -> None:
        self._sessions = session_factory
        self._master_keys = master_keys
        self._checkpoint_every = checkpoint_every
        self._checkpoint_seconds = checkpoint_seconds

    # --- writing -------------------------------------------------------------------
    def append(self, session: Session, event: AuditEvent) -> int:
        """Append ``event`` inside the caller's transaction; returns its sequence number.

        The action and its record commit together or not at all.
        """
        seq = self._extend(session, self._lock_head(session), event)
        session.flush()
        return seq

    def _extend(self, session: Session, head: AuditHead, event: AuditEvent) -> int:
        """Add ``event`` after the locked ``head`` and move the head to it (not flushed)."""
        now = event.ts or datetime.now(UTC)
        entry = AuditEntry(
            seq=head.seq + 1,
            ts=now,
            actor_subject=event.actor.subject,
            actor_client_id=event.actor.client_id,
            tenant_id=event.tenant_id,
            action=event.action,
            resource=event.resource,
            outcome=event.outcome,
            request_id=event.actor.request_id,
            client_addr=event.actor.client_addr,
            details=event.details,
            prev_hash=head.hash,
        )
        entry.hash = entry_hash(entry_record(entry))
        session.add(entry)
        head.seq, head.hash = entry.seq, entry.hash
        if (
            entry.seq - head.checkpoint_seq >= self._checkpoint_every
            or (now - head.checkpoint_at).total_seconds() >= self._checkpoint_seconds
        ):
            self._checkpoint(session, head, now)
        return entry.seq

    def append_action(
        self,
        session: Session,
        actor: Actor | None,
        action: str,
        resource: str,
        tenant_id: str | None,
        *,
        details: dict[str, Any] | None = None,
    ) -> int:
        """Record an admin action in its own transaction (``None`` actor: the operator)."""
        return self.append(
            session,
            AuditEvent(
                action=action,
                resource=resource,
                tenant_id=tenant_id,
                actor=actor or Actor(subject="operator"),
                details=details or {},
            ),
        )

    def record(self, event: AuditEvent) -> int:
        """Append one event in its own transaction (for events with no other action)."""
        with unit_of_work(self._sessions, write=True) as session:
            return self.append(session, event)

    def record_many(self, events: Sequence[AuditEvent]) -> None:
        """Append several events in one transaction (batched inference records).

        The head is locked once and the entries go to the database in one
        flush: a busy gateway writes a batch every second, on a thread that
        shares the interpreter with the calls it serves.
        """
        if not events:
            return
        with unit_of_work(self._sessions, write=True) as session:
            head = self._lock_head(session)
            for event in events:
                self._extend(session, head, event)

    def _lock_head(self, session: Session) -> AuditHead:
        head = session.scalar(select(AuditHead).where(AuditHead.id == 1).with_for_update())
        if head is None:
            head = AuditHead(
                id=1, seq=0, hash=GENESIS, checkpoint_seq=0, checkpoint_at=datetime.now(UTC)
            )
            session.add(head)
            session.flush()
        return head

    def _signing_key(self, session: Session) -> Ed25519PrivateKey:
        seed = server_secret(
            session,
            self._master_keys,
            SIGNING_KEY_NAME,
            create=lambda: Ed25519PrivateKey.generate().private_bytes_raw(),
        )
        return Ed25519PrivateKey.from_private_bytes(seed)

    def _checkpoint(self, session: Session, head: AuditHead, now: datetime) -> None:
        key = self._signing_key(session)
        session.add(
            AuditCheckpoint(
                seq=head.seq,
                hash=head.hash,
                signed_at=now,
                key_id=_key_id(key.public_key()),
                signature=key.sign(_checkpoint_message(head.seq, head.hash)),
            )
        )
        head.checkpoint_seq, head.checkpoint_at = head.seq, now

    def checkpoint_now(self) -> int:
        """Sign the current head (e.g. before an export); returns its sequence number."""
        with unit_of_work(self._sessions, write=True) as session:
            head = self._lock_head(session)
            if head.seq and head.checkpoint_seq != head.seq:
                self._checkpoint(session, head, datetime.now(UTC))
            return head.seq

    def public_key(self) -> bytes:
        """The raw Ed25519 public key that verifies checkpoints."""
        with unit_of_work(self._sessions, write=True) as session:
            return (
                self._signing_key(session).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            )

    # --- reading ---------------------------------------------------------------------
    def query(
        self,
        *,
        tenant_id: str | None,
        all_tenants: bool = False,
        actor: str | None = None,
        action: str | None = None,
        resource: str | None = None,
        outcome: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_seq: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Entries newest first, filtered; ``before_seq`` is the cursor for the next page.

        Without ``all_tenants`` only ``tenant_id``'s entries are returned.
        """
        statement = select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(limit)
        if not all_tenants or tenant_id is not None:
            statement = statement.where(AuditEntry.tenant_id == tenant_id)
        if actor is not None:
            statement = statement.where(
                (AuditEntry.actor_subject == actor) | (AuditEntry.actor_client_id == actor)
            )
        for column, value in (
            (AuditEntry.action, action),
            (AuditEntry.resource, resource),
            (AuditEntry.outcome, outcome),
        ):
            if value is not None:
                statement = statement.where(column == value)
        if since is not None:
            statement = statement.where(AuditEntry.ts >= since)
        if until is not None:
            statement = statement.where(AuditEntry.ts < until)
        if before_seq is not None:
            statement = statement.where(AuditEntry.seq < before_seq)
        with unit_of_work(self._sessions) as session:
            return [{**entry_record(e), "hash": e.hash} for e in session.scalars(statement)]

    def export(self, *, since_seq: int = 0) -> Iterator[dict[str, Any]]:
        """Lines of an export: the public key, entries from ``since_seq``, then checkpoints."""
        yield {"type": "public_key", "key": base64.b64encode(self.public_key()).decode()}
        with unit_of_work(self._sessions) as session:
            entries = session.scalars(
                select(AuditEntry)
                .where(AuditEntry.seq > since_seq)
                .order_by(AuditEntry.seq)
                .execution_options(yield_per=500)
            )
            for entry in entries:
                yield {"type": "entry", **entry_record(entry), "hash": entry.hash}
            for point in session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)):
                yield {"type": "checkpoint", **_checkpoint_record(point)}

    # --- verifying -------------------------------------------------------------------
    def verify(self, *, exported: Iterable[dict[str, Any]] = ()) -> VerifyResult:
        """Walk the whole chain; with an export, also hold the log to its checkpoints."""
        external = [line for line in exported if line.get("type") == "checkpoint"]
        keys = [
            base64.b64decode(line["key"]) for line in exported if line.get("type") == "public_key"
        ]
        with unit_of_work(self._sessions, write=True) as session:
            public = self._signing_key(session).public_key()
            trusted = Ed25519PublicKey.from_public_bytes(keys[0]) if keys else public
            stored = {
                p.seq: _checkpoint_record(p) for p in session.scalars(select(AuditCheckpoint))
            }
            rows = session.scalars(
                select(AuditEntry).order_by(AuditEntry.seq).execution_options(yield_per=1000)
            )
            try:
                return _walk(rows, checkpoints=[*stored.values(), *external], key=trusted)
            finally:
                rows.close()  # a server-side cursor (PostgreSQL) when the walk stops early


def _key_id(public: Ed25519PublicKey) -> str:
    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def _checkpoint_record(point: AuditCheckpoint) -> dict[str, Any]:
    return {
        "seq": point.seq,
        "hash": point.hash,
        "signed_at": point.signed_at.isoformat(),
        "key_id": point.key_id,
        "signature": base64.b64encode(point.signature).decode(),
    }


def _broken(seq: int, reason: str, entries: int) -> VerifyResult:
    return VerifyResult(ok=False, entries=entries, first_bad_seq=seq, reason=reason)


def _walk(
    entries: Iterable[AuditEntry], *, checkpoints: list[dict[str, Any]], key: Ed25519PublicKey
) -> VerifyResult:
    by_seq: dict[int, list[dict[str, Any]]] = {}
    for point in checkpoints:
        message = _checkpoint_message(int(point.get("seq", 0)), str(point.get("hash", "")))
        try:
            key.verify(base64.b64decode(point["signature"]), message)
        except (InvalidSignature, ValueError, KeyError):
            return _broken(
                int(point.get("seq", 0)),
                "checkpoint signature is invalid (checkpoint replaced or forged)",
                0,
            )
        by_seq.setdefault(int(point["seq"]), []).append(point)
    expected_seq, prev_hash, count = 1, GENESIS, 0
    for entry in entries:
        count += 1
        problem = _entry_problem(entry, expected_seq, prev_hash, by_seq.get(entry.seq, []))
        if problem is not None:
            return _broken(min(entry.seq, expected_seq), problem, count)
        prev_hash = entry.hash
        expected_seq += 1
    last = expected_seq - 1
    beyond = [seq for seq in by_seq if seq > last]
    if beyond:
        return _broken(
            last + 1,
            f"log ends at entry {last} but a checkpoint covers entry "
            f"{max(beyond)} (tail truncated)",
            count,
        )
    return VerifyResult(ok=True, entries=count)


def _entry_problem(
    entry: AuditEntry, expected_seq: int, prev_hash: str, points: list[dict[str, Any]]
) -> str | None:
    """Why ``entry`` breaks the chain at ``expected_seq``, or ``None``."""
    if entry.seq > expected_seq:
        return f"entry {expected_seq} is missing (deleted)"
    if entry.seq < expected_seq:
        return f"entry {entry.seq} is out of order"
    if entry.prev_hash != prev_hash:
        return (
            "entry does not link to the previous entry (inserted, deleted or reordered before it)"
        )
    if entry_hash(entry_record(entry)) != entry.hash:
        return "entry content does not match its hash (edited)"
    if any(point["hash"] != entry.hash for point in points):
        return "entry differs from its signed checkpoint"
    return None
