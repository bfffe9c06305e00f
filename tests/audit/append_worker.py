"""Append audit events from a separate process (concurrency and crash tests run several of these).

Usage: python append_worker.py --url URL [--schema S] --count N [--user U] [--ack]
With --count 0 it appends until killed; with --ack it prints each event's seq after its commit.
"""

from __future__ import annotations

import argparse
import itertools

from audit import Agent, Entity, create_audit_engine, record, unit_of_work


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--user", default="worker")
    parser.add_argument("--ack", action="store_true")
    args = parser.parse_args()
    options = {"connect_args": {"options": f"-csearch_path={args.schema}"}} if args.schema else {}
    engine = create_audit_engine(args.url, **options)
    counter = itertools.count() if args.count == 0 else range(args.count)
    for index in counter:
        with unit_of_work(engine) as session:
            event = record(
                session=session,
                action="R",
                type_code="110110",
                agent=Agent(args.user, "worker"),
                entities=[Entity("study", f"1.2.826.0.1.{index}")],
            )
        if args.ack:
            print(event.seq, flush=True)  # acknowledged: committed


if __name__ == "__main__":
    main()
