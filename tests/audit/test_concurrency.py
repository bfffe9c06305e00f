"""Many appenders at once never fork the chain; an appender killed mid-flight loses no acknowledged event."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from audit import Agent, record, unit_of_work, verify_log
from audit.models import AuditEvent

from .conftest import WORKER, LogTarget


def _seqs(engine: Engine) -> list[int]:
    with Session(engine) as session:
        return list(session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))


def _verified(engine: Engine) -> bool:
    with Session(engine) as session:
        return verify_log(session=session).ok


def test_threads_append_at_once(engine: Engine) -> None:
    threads, per_thread, errors = 8, 15, []

    def append(worker: int) -> None:
        try:
            for _ in range(per_thread):
                with unit_of_work(engine) as session:
                    record(session=session, action="R", type_code="110110", agent=Agent(f"thread-{worker}"))
        except Exception as exc:  # collected: a thread's exception would otherwise vanish
            errors.append(exc)

    pool = [threading.Thread(target=append, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=120)
    assert errors == []
    assert _seqs(engine) == list(range(threads * per_thread))
    assert _verified(engine)


def test_processes_append_at_once(target: LogTarget, engine: Engine) -> None:
    processes, per_process = 4, 15
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), *target.worker_args(), "--count", str(per_process), "--user", f"proc-{i}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=180)
        assert worker.returncode == 0, stderr
    assert _seqs(engine) == list(range(processes * per_process))
    assert _verified(engine)


def test_sigkill_loses_no_acknowledged_event(target: LogTarget, engine: Engine) -> None:
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), *target.worker_args(), "--count", "0", "--ack"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    acknowledged = []
    assert worker.stdout is not None
    while len(acknowledged) < 40:
        line = worker.stdout.readline()
        assert line, "the worker stopped before it was killed"
        acknowledged.append(int(line))
    os.killpg(worker.pid, signal.SIGKILL)
    rest, _ = worker.communicate(timeout=30)
    acknowledged += [int(line) for line in rest.split()]
    stored = set(_seqs(engine))
    assert set(acknowledged) <= stored
    assert _verified(engine)
    with unit_of_work(engine) as session:  # the log goes on after the crash
        after = record(session=session, action="R", type_code="110110", agent=Agent("after"))
    assert after.seq == max(stored) + 1 and _verified(engine)


def test_a_long_data_access_does_not_hold_the_log_for_everyone_else(engine: Engine) -> None:
    """One request records its event, then reads its data for a while; another request's event must
    go through meanwhile. The lock is taken at the append, just before the commit, not at ``record``."""
    recorded, other_done, errors = threading.Event(), threading.Event(), []

    def slow_request() -> None:
        try:
            with unit_of_work(engine) as session:
                record(session=session, action="R", type_code="110103", agent=Agent("slow"))
                recorded.set()
                if not other_done.wait(timeout=20):  # the data access, lasting until the other request is done
                    errors.append("the other request waited for this one's data access")
        except Exception as exc:
            errors.append(exc)

    def quick_request() -> None:
        recorded.wait(timeout=20)
        try:
            with unit_of_work(engine) as session:
                record(session=session, action="R", type_code="110103", agent=Agent("quick"))
        except Exception as exc:
            errors.append(exc)
        other_done.set()

    threads = [threading.Thread(target=slow_request), threading.Thread(target=quick_request)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    with Session(engine) as session:
        users = list(session.scalars(select(AuditEvent.agent_user).order_by(AuditEvent.seq)))
    assert users == ["quick", "slow"] and _verified(engine)


def test_recorded_times_follow_sequence_order_even_when_the_clock_steps_back(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server clock set back (NTP, a wrong manual change) must not make a later event look earlier."""
    import audit.events

    for step in range(3):
        if step == 1:
            monkeypatch.setattr(audit.events, "_now", lambda: datetime.now(UTC) - timedelta(hours=1))
        with unit_of_work(engine) as session:
            record(session=session, action="R", type_code="110110", agent=Agent(f"step-{step}"))
    with Session(engine) as session:
        times = list(session.scalars(select(AuditEvent.recorded).order_by(AuditEvent.seq)))
    assert times == sorted(times) and _verified(engine)
