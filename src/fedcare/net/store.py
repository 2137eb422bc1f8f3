"""The coordinator's run store: runs, rounds, participants, metrics, events, site status.

One SQLAlchemy URL: SQLite by default (one file in the study folder, WAL so
``fedcare coordinator status`` reads while the coordinator writes), PostgreSQL by passing
its URL. Only portable column types are used; JSON travels as text. Every method is one
transaction, so a coordinator killed mid-round leaves the store consistent and a resumed run
restarts the unfinished round (``start_round`` resets it).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    RowMapping,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from fedcare.core import faults
from fedcare.core.errors import ConfigError, FedcareError, ProtocolError

_meta = MetaData()

runs_table = Table(
    "runs",
    _meta,
    Column("run_id", String(128), primary_key=True),
    Column("study", String(256), nullable=False),
    Column("plan_hash", String(64), nullable=False),
    Column("config", Text, nullable=False),
    Column("status", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
rounds_table = Table(
    "rounds",
    _meta,
    Column("run_id", String(128), ForeignKey("runs.run_id"), primary_key=True),
    Column("round", Integer, primary_key=True),
    Column("status", String(32), nullable=False),
    Column("sites", Text, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("metrics", Text),
)
participants_table = Table(
    "participants",
    _meta,
    Column("run_id", String(128), ForeignKey("runs.run_id"), primary_key=True),
    Column("round", Integer, primary_key=True),
    Column("site", String(64), primary_key=True),
    Column("status", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("update_hash", String(128)),
    Column("nbytes", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)
metrics_table = Table(
    "metrics",
    _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(128), ForeignKey("runs.run_id"), nullable=False, index=True),
    Column("round", Integer, nullable=False),
    Column("name", String(128), nullable=False),
    Column("site", String(64)),
    Column("value", Float, nullable=False),
)
events_table = Table(
    "events",
    _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(128), ForeignKey("runs.run_id"), nullable=False, index=True),
    Column("time", Float, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("site", String(64)),
    Column("detail", Text, nullable=False),
)
sites_table = Table(
    "site_status",
    _meta,
    Column("run_id", String(128), ForeignKey("runs.run_id"), primary_key=True),
    Column("site", String(64), primary_key=True),
    Column("status", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# How far the study's audit log reached, recorded after each append: an audit log cut
# short (at the end too) no longer reaches this head, and `fedcare audit verify` says so.
audit_heads_table = Table(
    "audit_heads",
    _meta,
    Column("log", String(256), primary_key=True),
    Column("entries", Integer, nullable=False),
    Column("head", String(64), nullable=False),
    Column("updated_at", Float, nullable=False),
)


# The writes a round makes, built once with bound parameters: building a SQLAlchemy
# statement costs more than running it, and a deployed round makes dozens of writes under
# the coordinator's lock. (Parameter names differ from the columns they are compared with,
# as an UPDATE's SET clause takes the column names.)
_R, _P, _S = rounds_table.c, participants_table.c, sites_table.c
_RUN_IS = runs_table.c.run_id == bindparam("k_run")
_ROUND_IS = (_R.run_id == bindparam("k_run")) & (_R.round == bindparam("k_round"))
_ROUND_PARTICIPANTS = (_P.run_id == bindparam("k_run")) & (_P.round == bindparam("k_round"))
_PARTICIPANT_IS = _ROUND_PARTICIPANTS & (_P.site == bindparam("k_site"))
_SITE_IS = (_S.run_id == bindparam("k_run")) & (_S.site == bindparam("k_site"))
_HEAD_IS = audit_heads_table.c.log == bindparam("k_log")

_RUN_EXISTS = select(runs_table.c.run_id).where(_RUN_IS)
_SET_RUN_STATUS = runs_table.update().where(_RUN_IS)
_ROUND_STATUS = select(_R.status).where(_ROUND_IS)
_ROUND_EXISTS = select(_R.round).where(_ROUND_IS)
_DELETE_ROUND = rounds_table.delete().where(_ROUND_IS)
_UPDATE_ROUND = rounds_table.update().where(_ROUND_IS)
_DELETE_PARTICIPANTS = participants_table.delete().where(_ROUND_PARTICIPANTS)
_UPDATE_PARTICIPANT = participants_table.update().where(_PARTICIPANT_IS)
_DELETE_METRICS = metrics_table.delete().where(
    (metrics_table.c.run_id == bindparam("k_run")) & (metrics_table.c.round == bindparam("k_round"))
)
_UPDATE_SITE = sites_table.update().where(_SITE_IS)
_UPDATE_HEAD = audit_heads_table.update().where(
    _HEAD_IS & (audit_heads_table.c.entries <= bindparam("k_entries"))
)
_HEAD_EXISTS = select(audit_heads_table.c.log).where(_HEAD_IS)


def _commit_point(what: str) -> str:
    return faults.declare(
        f"coordinator.store.{what}",
        f"the run store's {what} transaction is about to commit: none of it is durable yet",
    )


COMMIT_POINTS = {
    name: _commit_point(name)
    for name in (
        "create_run",
        "set_status",
        "start_round",
        "record_participant",
        "finish_round",
        "record_event",
        "set_site_status",
        "record_audit_head",
    )
}

RUN_STATUSES = frozenset({"created", "waiting", "running", "finished", "failed", "stopped"})


class StoreError(FedcareError):
    """The run store cannot be opened, or a run or round it was asked about does not exist."""


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    study: str
    plan_hash: str
    config: dict[str, Any]
    status: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class ParticipantRecord:
    site: str
    status: str  # e.g. sampled, contributed, rejected, dropped
    reason: str
    update_hash: str | None
    nbytes: int


@dataclass(frozen=True)
class RoundRecord:
    run_id: str
    round: int
    status: str  # running or finished
    sites: list[str]
    started_at: float
    finished_at: float | None
    metrics: dict[str, Any]
    participants: list[ParticipantRecord]

    def by_status(self, status: str) -> list[str]:
        return [p.site for p in self.participants if p.status == status]

    def missing(self) -> dict[str, str]:
        """Sampled sites that did not contribute to this finished round, with why (from
        the coordinator's round record; for older runs, from the participants)."""
        if self.status != "finished":
            return {}
        recorded = self.metrics.get("missing")
        if isinstance(recorded, dict):
            return {str(site): str(why) for site, why in recorded.items()}
        contributed = set(self.by_status("contributed"))
        return {
            p.site: f"{p.status}: {p.reason}" if p.reason else p.status
            for p in self.participants
            if p.site in self.sites and p.site not in contributed
        }

    def short(self) -> dict[str, Any] | None:
        """``{round, sampled, contributed, missing}`` (round from 1) if the round ran short."""
        missing = self.missing()
        if not missing:
            return None
        contributed = self.by_status("contributed")
        return {
            "round": self.round + 1,
            "sampled": list(self.sites),
            "contributed": contributed,
            "missing": missing,
        }


@dataclass(frozen=True)
class EventRecord:
    run_id: str
    time: float
    kind: str
    site: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class MetricRecord:
    round: int
    name: str
    site: str | None
    value: float


@dataclass(frozen=True)
class SiteStatusRecord:
    site: str
    status: str  # e.g. connected, waiting_approval, approved, training, disconnected
    detail: str
    updated_at: float


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file (e.g. ``study/runs.db``)."""
    return f"sqlite:///{Path(path).resolve()}"


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be JSON data without NaN: {exc}") from exc


def _numeric_leaves(metrics: Mapping[str, Any]) -> Iterator[tuple[str, str | None, float]]:
    """``{name: number}`` and ``{name: {site: number}}`` as (name, site, value) rows."""
    for name, value in metrics.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float) and math.isfinite(value):
            yield name, None, float(value)
        elif isinstance(value, Mapping):
            for site, item in value.items():
                if (
                    isinstance(item, int | float)
                    and not isinstance(item, bool)
                    and math.isfinite(item)
                ):
                    yield name, str(site), float(item)


class RunStore:
    """Runs, rounds, participants, metrics and events in one database (see module doc)."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self._known_runs: set[str] = set()
        self._started_rounds: set[tuple[str, int]] = set()  # (run, round) start_round wrote
        try:
            self.engine: Engine = create_engine(url, echo=echo, future=True)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise StoreError(f"cannot open run store {url!r}: {exc}") from exc
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            _meta.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot create the run store tables in {url!r}: {exc}") from exc

    @classmethod
    def in_folder(cls, folder: Path, name: str = "runs.db") -> RunStore:
        """The SQLite store of a study folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return cls(sqlite_url(folder / name))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path | None:
        """The SQLite file (None for a server database such as PostgreSQL)."""
        database = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or not database or database == ":memory:":
            return None
        return Path(database)

    @contextmanager
    def _tx(self, commit: str | None = None) -> Iterator[Connection]:
        """One transaction; ``commit`` names the fault point reached just before it commits."""
        try:
            with self.engine.begin() as conn:
                yield conn
                if commit is not None:
                    faults.reach(COMMIT_POINTS[commit])
        except (SQLAlchemyError, OSError) as exc:  # OSError: the disk refused the commit
            raise StoreError(f"run store {self.url!r}: {exc}") from exc

    @property
    def journal_mode(self) -> str:
        """SQLite's journal mode ('wal' by default here); the dialect name elsewhere."""
        if self.engine.dialect.name != "sqlite":
            return self.engine.dialect.name
        with self.engine.connect() as conn:
            return str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).lower()

    # -- runs ----------------------------------------------------------------------------

    def create_run(
        self, run_id: str, study: str, plan_hash: str, config: Mapping[str, Any]
    ) -> RunRecord:
        now = time.time()
        row = {
            "run_id": run_id,
            "study": study,
            "plan_hash": plan_hash,
            "config": _json(dict(config), f"run '{run_id}' config"),
            "status": "created",
            "created_at": now,
            "updated_at": now,
        }
        with self._tx("create_run") as conn:
            if conn.execute(
                select(runs_table.c.run_id).where(runs_table.c.run_id == run_id)
            ).first():
                raise ProtocolError(
                    f"run '{run_id}' already exists in {self.url!r}; resume it instead of creating it"
                )
            conn.execute(runs_table.insert().values(**row))
        return self.run(run_id)

    def set_status(self, run_id: str, status: str) -> None:
        if status not in RUN_STATUSES:
            raise ConfigError(f"run status must be one of {sorted(RUN_STATUSES)}, found {status!r}")
        with self._tx("set_status") as conn:
            result = conn.execute(
                _SET_RUN_STATUS, {"k_run": run_id, "status": status, "updated_at": time.time()}
            )
            if result.rowcount == 0:
                raise StoreError(f"no run '{run_id}' in {self.url!r}")

    def runs(self) -> list[RunRecord]:
        with self._tx() as conn:
            rows = conn.execute(select(runs_table).order_by(runs_table.c.created_at)).all()
        return [_run(row._mapping) for row in rows]

    def run(self, run_id: str) -> RunRecord:
        with self._tx() as conn:
            row = conn.execute(select(runs_table).where(runs_table.c.run_id == run_id)).first()
        if row is None:
            known = ", ".join(r.run_id for r in self.runs()) or "none"
            raise StoreError(f"no run '{run_id}' in {self.url!r} (runs: {known})")
        return _run(row._mapping)

    def _require_run(self, conn: Connection, run_id: str) -> None:
        if run_id in self._known_runs:  # runs are never deleted: once seen, it exists
            return
        if not conn.execute(_RUN_EXISTS, {"k_run": run_id}).first():
            raise StoreError(f"no run '{run_id}' in {self.url!r}")
        self._known_runs.add(run_id)

    # -- rounds --------------------------------------------------------------------------

    def start_round(self, run_id: str, round: int, sites: Sequence[str]) -> None:
        """Record that ``round`` started with the sampled ``sites``. Starting an unfinished
        round again (after a coordinator restart) resets it; a finished round is final."""
        now = time.time()
        key = {"k_run": run_id, "k_round": round}
        with self._tx("start_round") as conn:
            self._require_run(conn, run_id)
            existing = conn.execute(_ROUND_STATUS, key).first()
            if existing is not None:
                if existing.status == "finished":
                    raise ProtocolError(f"run '{run_id}' round {round} is already finished")
                conn.execute(_DELETE_ROUND, key)
                conn.execute(_DELETE_PARTICIPANTS, key)
            conn.execute(
                rounds_table.insert(),
                {
                    "run_id": run_id,
                    "round": round,
                    "status": "running",
                    "sites": json.dumps(list(sites)),
                    "started_at": now,
                },
            )
            if sites:
                sampled = {"status": "sampled", "reason": "", "update_hash": None, "nbytes": 0}
                conn.execute(
                    participants_table.insert(),
                    [
                        {
                            "run_id": run_id,
                            "round": round,
                            "site": site,
                            **sampled,
                            "updated_at": now,
                        }
                        for site in sites
                    ],
                )
            conn.execute(_SET_RUN_STATUS, {"k_run": run_id, "status": "running", "updated_at": now})
        self._started_rounds.add((run_id, round))

    def record_participant(
        self,
        run_id: str,
        round: int,
        site: str,
        status: str,
        reason: str = "",
        update_hash: str | None = None,
        nbytes: int = 0,
    ) -> None:
        """Set what a site did in a round (contributed, rejected with reason, dropped...)."""
        values = {
            "status": status,
            "reason": reason,
            "update_hash": update_hash,
            "nbytes": int(nbytes),
            "updated_at": time.time(),
        }
        key = {"k_run": run_id, "k_round": round, "k_site": site}
        with self._tx("record_participant") as conn:
            # A round this store started stays (start_round only ever replaces it).
            if (run_id, round) not in self._started_rounds:
                if not conn.execute(_ROUND_EXISTS, key).first():
                    raise StoreError(f"run '{run_id}' has no round {round}; call start_round first")
                self._started_rounds.add((run_id, round))
            if conn.execute(_UPDATE_PARTICIPANT, {**key, **values}).rowcount == 0:
                conn.execute(
                    participants_table.insert(),
                    {"run_id": run_id, "round": round, "site": site, **values},
                )

    def finish_round(self, run_id: str, round: int, metrics: Mapping[str, Any]) -> None:
        """Close a round with its metrics: kept whole as JSON, and each number (or number
        per site) as a row of the metrics table."""
        payload = _json(dict(metrics), f"run '{run_id}' round {round} metrics")
        key = {"k_run": run_id, "k_round": round}
        with self._tx("finish_round") as conn:
            result = conn.execute(
                _UPDATE_ROUND,
                {**key, "status": "finished", "finished_at": time.time(), "metrics": payload},
            )
            if result.rowcount == 0:
                raise StoreError(f"run '{run_id}' has no round {round} to finish")
            conn.execute(_DELETE_METRICS, key)
            rows = [
                {"run_id": run_id, "round": round, "name": n, "site": s, "value": v}
                for n, s, v in _numeric_leaves(metrics)
            ]
            if rows:
                conn.execute(metrics_table.insert(), rows)

    def rounds(self, run_id: str) -> list[RoundRecord]:
        with self._tx() as conn:
            self._require_run(conn, run_id)
            rounds = conn.execute(
                select(rounds_table)
                .where(rounds_table.c.run_id == run_id)
                .order_by(rounds_table.c.round)
            ).all()
            people = conn.execute(
                select(participants_table)
                .where(participants_table.c.run_id == run_id)
                .order_by(participants_table.c.round, participants_table.c.site)
            ).all()
        by_round: dict[int, list[ParticipantRecord]] = {}
        for p in people:
            by_round.setdefault(p.round, []).append(
                ParticipantRecord(p.site, p.status, p.reason, p.update_hash, p.nbytes)
            )
        return [
            RoundRecord(
                run_id=r.run_id,
                round=r.round,
                status=r.status,
                sites=json.loads(r.sites),
                started_at=r.started_at,
                finished_at=r.finished_at,
                metrics=json.loads(r.metrics) if r.metrics else {},
                participants=by_round.get(r.round, []),
            )
            for r in rounds
        ]

    def last_finished_round(self, run_id: str) -> int | None:
        finished = [r.round for r in self.rounds(run_id) if r.status == "finished"]
        return max(finished) if finished else None

    def metrics(self, run_id: str, name: str | None = None) -> list[MetricRecord]:
        query = select(metrics_table).where(metrics_table.c.run_id == run_id)
        if name is not None:
            query = query.where(metrics_table.c.name == name)
        with self._tx() as conn:
            rows = conn.execute(query.order_by(metrics_table.c.round, metrics_table.c.id)).all()
        return [MetricRecord(r.round, r.name, r.site, r.value) for r in rows]

    # -- events and site status ----------------------------------------------------------

    def record_event(
        self,
        run_id: str,
        kind: str,
        site: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        payload = _json(dict(detail or {}), f"event '{kind}' detail")
        with self._tx("record_event") as conn:
            self._require_run(conn, run_id)
            conn.execute(
                events_table.insert(),
                {
                    "run_id": run_id,
                    "time": time.time(),
                    "kind": kind,
                    "site": site,
                    "detail": payload,
                },
            )

    def events(self, run_id: str, kind: str | None = None) -> list[EventRecord]:
        query = select(events_table).where(events_table.c.run_id == run_id)
        if kind is not None:
            query = query.where(events_table.c.kind == kind)
        with self._tx() as conn:
            rows = conn.execute(query.order_by(events_table.c.id)).all()
        return [EventRecord(r.run_id, r.time, r.kind, r.site, json.loads(r.detail)) for r in rows]

    def set_site_status(self, run_id: str, site: str, status: str, detail: str = "") -> None:
        """What a site is doing now (shown by ``fedcare coordinator status``, e.g. which
        sites wait for their data owner's approval)."""
        now = time.time()
        values = {"status": status, "detail": detail, "updated_at": now}
        with self._tx("set_site_status") as conn:
            self._require_run(conn, run_id)
            if (
                conn.execute(_UPDATE_SITE, {"k_run": run_id, "k_site": site, **values}).rowcount
                == 0
            ):
                conn.execute(sites_table.insert(), {"run_id": run_id, "site": site, **values})

    def sites(self, run_id: str) -> list[SiteStatusRecord]:
        with self._tx() as conn:
            rows = conn.execute(
                select(sites_table)
                .where(sites_table.c.run_id == run_id)
                .order_by(sites_table.c.site)
            ).all()
        return [SiteStatusRecord(r.site, r.status, r.detail, r.updated_at) for r in rows]

    # -- the audit log's head ------------------------------------------------------------

    def record_audit_head(self, log: str, entries: int, head: str) -> None:
        """The audit log ``log`` (its file name) now holds ``entries`` entries ending in
        ``head``. Never moves back: a resumed coordinator appends after the recorded head."""
        now = time.time()
        values = {"entries": int(entries), "head": head, "updated_at": now}
        with self._tx("record_audit_head") as conn:
            updated = conn.execute(
                _UPDATE_HEAD, {"k_log": log, "k_entries": int(entries), **values}
            ).rowcount
            if not updated and not conn.execute(_HEAD_EXISTS, {"k_log": log}).first():
                conn.execute(audit_heads_table.insert(), {"log": log, **values})

    def audit_head(self, log: str) -> tuple[int, str] | None:
        """``(entries, head hash)`` last recorded for the audit log ``log``, or None."""
        with self._tx() as conn:
            row = conn.execute(
                select(audit_heads_table.c.entries, audit_heads_table.c.head).where(
                    audit_heads_table.c.log == log
                )
            ).first()
        return None if row is None else (int(row.entries), str(row.head))


def _run(row: RowMapping) -> RunRecord:
    return RunRecord(
        run_id=row["run_id"],
        study=row["study"],
        plan_hash=row["plan_hash"],
        config=json.loads(row["config"]),
        status=row["status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers (``coordinator status``) run beside the writer; foreign keys on;
    wait for a lock instead of failing at once."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
