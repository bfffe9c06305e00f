"""Audit log speed: append latency and verify throughput, against bare database work in the same run.

- append: one event per unit of work (lock, read the head, hash, insert, commit with synchronous=FULL
  on SQLite), median and p99, against a bare one-row INSERT per transaction on the same database.
  Aim: under 2 ms median on SQLite.
- verify: recompute every leaf, link and the Merkle root of a 50,000-event log, against fetching
  the same rows. Aim: above 50,000 events/s.
- concurrent writers: appends per second from 1 and 8 threads, each unit of work reading its data
  for 5 ms after recording its event (the way a request does); the log's lock is taken at the append,
  just before the commit, so the reads overlap. The ratio 8/1 is what concurrency buys.
PostgreSQL figures are printed too when a server answers at OMNICLINIC_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, insert, select, text
from sqlalchemy.orm import Session

from audit import Agent, Entity, create_audit_engine, record, unit_of_work, upgrade_database, verify_log
from audit.events import COLUMNS, GENESIS_HASH, canonical_bytes, canonical_json
from audit.merkle import leaf_hash
from audit.models import AuditEvent

APPENDS = 1000
VERIFY_EVENTS = 50_000
POSTGRES_URL = os.environ.get("OMNICLINIC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def bench_append(engine: Engine) -> tuple[list[float], list[float]]:
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE bench_bare (id INTEGER PRIMARY KEY, payload TEXT)"))
    ours, bare = [], []
    for index in range(APPENDS):
        started = time.perf_counter()
        with unit_of_work(engine) as session:
            record(
                session=session,
                action="R",
                type_code="110110",
                agent=Agent("bench", "radiologist"),
                entities=[Entity("study", f"1.2.826.0.1.{index}")],
            )
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        with engine.begin() as connection:
            connection.execute(
                text("INSERT INTO bench_bare (id, payload) VALUES (:i, :p)"), {"i": index, "p": "x" * 300}
            )
        bare.append(time.perf_counter() - started)
    return ours, bare


WRITER_APPENDS = 40
DATA_ACCESS_S = 0.005


def bench_writers(engine: Engine, writers: int) -> float:
    """Appends per second from ``writers`` threads, each unit of work holding a 5 ms data access."""
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for index in range(WRITER_APPENDS):
                with unit_of_work(engine) as session:
                    record(
                        session=session,
                        action="R",
                        type_code="110103",
                        agent=Agent(f"writer{worker}", "radiologist"),
                        entities=[Entity("study", f"1.2.826.0.2.{worker}.{index}")],
                    )
                    time.sleep(DATA_ACCESS_S)  # reading the study the event is about
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(writers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return writers * WRITER_APPENDS / elapsed


def bulk_log(engine: Engine, count: int) -> None:
    """Write a valid chain of ``count`` events directly (the append path would take minutes)."""
    previous, rows = GENESIS_HASH, []
    now = datetime.now(UTC)
    for seq in range(count):
        row: dict[str, object] = {
            "seq": seq,
            "event_id": str(uuid.uuid4()),
            "recorded": now,
            "action": "R",
            "type_system": "DCM",
            "type_code": "110110",
            "type_display": "Patient Record",
            "outcome": 0,
            "agent_user": f"user{seq % 50}",
            "agent_role": "radiologist",
            "agent_requestor": True,
            "source_node": "ws-1",
            "source_address": "",
            "patient_pseudonym": f"P{seq % 997}",
            "purpose_of_use": "TREAT",
            "request_id": "",
            "entities": canonical_json([{"id": f"1.2.826.0.1.{seq}", "kind": "study"}]),
            "details": "{}",
            "prev_hash": previous,
        }
        row["leaf_hash"] = previous = leaf_hash(canonical_bytes(row)).hex()
        rows.append(row)
    with engine.begin() as connection:
        for start in range(0, count, 5000):
            connection.execute(insert(AuditEvent), rows[start : start + 5000])


def bench_verify(engine: Engine) -> tuple[float, float]:
    with Session(engine) as session:
        started = time.perf_counter()
        fetched = sum(
            1
            for _ in session.execute(
                select(*[getattr(AuditEvent, c) for c in COLUMNS])
                .order_by(AuditEvent.seq)
                .execution_options(yield_per=5000)
            )
        )
        fetch_s = time.perf_counter() - started
        started = time.perf_counter()
        report = verify_log(session=session)
        verify_s = time.perf_counter() - started
    assert report.ok and report.events == fetched == VERIFY_EVENTS
    return VERIFY_EVENTS / verify_s, VERIFY_EVENTS / fetch_s


def run(label: str, fresh_engine) -> None:  # type: ignore[no-untyped-def]
    engine = fresh_engine()
    upgrade_database(engine)
    ours, bare = bench_append(engine)
    engine.dispose()
    median, p99, bare_median = statistics.median(ours) * 1e3, percentile(ours, 99) * 1e3, statistics.median(bare) * 1e3
    print(
        f"{label}: append median {median:.2f} ms, p99 {p99:.2f} ms; bare insert median {bare_median:.2f} ms; "
        f"ratio {median / bare_median:.2f}x  ({APPENDS} appends)"
    )
    engine = fresh_engine()
    upgrade_database(engine)
    one, eight = bench_writers(engine, 1), bench_writers(engine, 8)
    engine.dispose()
    print(
        f"{label}: {one:,.0f} appends/s from 1 writer, {eight:,.0f} from 8 concurrent writers "
        f"(5 ms data access in each unit of work); ratio {eight / one:.2f}x"
    )
    engine = fresh_engine()
    upgrade_database(engine)
    bulk_log(engine, VERIFY_EVENTS)
    verify_rate, fetch_rate = bench_verify(engine)
    engine.dispose()
    print(
        f"{label}: verify {verify_rate:,.0f} events/s; fetching the rows alone {fetch_rate:,.0f} rows/s; "
        f"ratio {fetch_rate / verify_rate:.2f}x  ({VERIFY_EVENTS:,} events)"
    )


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        counter = iter(range(100))
        run("SQLite", lambda: create_audit_engine(f"sqlite:///{Path(folder) / f'audit{next(counter)}.db'}"))
    try:
        admin = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with admin.connect():
            pass
    except Exception:
        print("PostgreSQL: not reachable, skipped")
        return
    schemas = []

    def fresh_postgres() -> Engine:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        schemas.append(schema)
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        return create_audit_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"})

    try:
        run("PostgreSQL", fresh_postgres)
    finally:
        with admin.begin() as connection:
            for schema in schemas:
                connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


if __name__ == "__main__":
    main()
