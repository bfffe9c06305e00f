"""Accounts: add, change a password, disable, log in. Every change is on the audit trail."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.core.security import ROLES, check_password_policy, hash_password, verify_password
from app.models import User
from app.services.auditing import Actor, record_access
from audit import Action, Outcome, unit_of_work

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class UserError(ValueError):
    """A user name, role or password the command or request cannot use (the message says why)."""


def _checked_name(username: str) -> str:
    if not USERNAME.match(username):
        raise UserError("a user name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return username


def add_user(engine: Engine, username: str, role: str, password: str, actor: Actor) -> None:
    _checked_name(username)
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    check_password_policy(password, username)
    with unit_of_work(engine) as session:
        if session.scalar(select(User).where(User.username == username)) is not None:
            raise UserError(f"there is already a user named {username}")
        session.add(User(username=username, role=role, password_hash=hash_password(password), disabled=False))
        record_access(
            session,
            actor,
            action=Action.CREATE,
            type_code="110100",
            details={"activity": "user added", "user": username, "role": role},
        )


def set_password(engine: Engine, username: str, password: str, actor: Actor) -> None:
    check_password_policy(password, username)
    _change_credentials(engine, username, actor, "password changed", password_hash=hash_password(password))


def disable_user(engine: Engine, username: str, actor: Actor) -> None:
    _change_credentials(engine, username, actor, "user disabled", disabled=True)


def _change_credentials(engine: Engine, username: str, actor: Actor, activity: str, **changes: object) -> None:
    """Apply ``changes`` to the user and end every login made before (audited as ``activity``)."""
    with unit_of_work(engine) as session:
        user = _existing(session, username)
        for name, value in changes.items():
            setattr(user, name, value)
        user.credentials_changed = datetime.now(UTC)
        record_access(
            session,
            actor,
            action=Action.UPDATE,
            type_code="110100",
            details={"activity": activity, "user": username},
        )


def list_users(engine: Engine) -> list[tuple[str, str, bool]]:
    with Session(engine) as session:
        return [(u.username, u.role, u.disabled) for u in session.scalars(select(User).order_by(User.username))]


def _existing(session, username: str) -> User:  # type: ignore[no-untyped-def]
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise UserError(f"there is no user named {username}")
    return user


def authenticate(engine: Engine, username: str, password: str, actor: Actor) -> User | None:
    """The active user these credentials name, or None; either way the attempt is audited
    (user authentication, outcome success or minor failure), and a failure says nothing of why.

    The password is checked (argon2: deliberately slow) before the audit's write lock is taken."""
    valid_name = bool(USERNAME.match(username))
    with Session(engine) as session:
        user = session.scalar(select(User).where(User.username == username)) if valid_name else None
        if user is not None:
            session.expunge(user)
    ok = verify_password(user.password_hash if user else None, password) and user is not None and not user.disabled
    who = Actor(
        username if valid_name else "(invalid user name)",
        user.role if ok and user else "",
        actor.address,
        actor.request_id,
    )
    with unit_of_work(engine) as session:
        record_access(
            session,
            who,
            action=Action.EXECUTE,
            type_code="110114",
            outcome=Outcome.SUCCESS if ok else Outcome.MINOR_FAILURE,
            details={"activity": "login"},
        )
    return user if ok else None


def active_user(engine: Engine, username: str, issued_at: float) -> User | None:
    """The user a token names, if still active and the token postdates their last credential change."""
    with Session(engine) as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None or user.disabled or issued_at < user.credentials_changed.timestamp():
            return None
        session.expunge(user)
        return user
