"""``edgejobs token create / list / revoke``.

``token create`` prints the new token's id on stderr and the secret alone on the last line of
stdout, once: only its hash is stored, so it can never be shown again. The commands work on
the database file directly (like every CLI command), whether or not a runner is serving it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from edgejobs.app import check_org
from edgejobs.cli import print_json, print_table
from edgejobs.cli.jobs import with_client
from edgejobs.clock import SystemClock
from edgejobs.models import iso_ms
from edgejobs.store import tokens as token_store
from edgejobs.store.audit import CLI_ACTOR, create_token_audited, revoke_token_audited


def register(subparsers: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``token create|list|revoke``."""
    token = subparsers.add_parser("token", help="API tokens: create, list, revoke")
    common(token)
    actions = token.add_subparsers(dest="token_command", metavar="ACTION")
    actions.required = True

    create = actions.add_parser("create", help="create a token; prints its secret once")
    common(create)
    create.add_argument("--org", required=True, help="the org, or '*' for a system token")
    create.add_argument("--role", required=True, choices=token_store.ROLES)
    create.add_argument("--name", default="", help="a note saying what the token is for")
    create.set_defaults(handler=run_create)

    listing = actions.add_parser("list", help="list tokens (never their secrets)")
    common(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=run_list)

    revoke = actions.add_parser("revoke", help="revoke a token and end its sessions")
    common(revoke)
    revoke.add_argument("token_id", metavar="ID")
    revoke.set_defaults(handler=run_revoke)


def run_create(args: argparse.Namespace) -> int:
    """Create a token; id on stderr, secret alone on stdout's last line."""
    org = None if args.org == "*" else check_org(args.org)
    now = SystemClock().now_ms()
    # The audit entry (token id ``cli``) is written in the same transaction as the token.
    new = with_client(
        args,
        lambda ej: ej.store.write(
            partial(
                create_token_audited,
                actor=CLI_ACTOR,
                org=org,
                role=args.role,
                name=args.name,
                now=now,
            )
        ),
        create=True,  # tokens may be made before the first runner ran
    )
    scope = "every org (system token)" if org is None else f"org {org}"
    print(f"created token {new.info.id} ({new.info.role}, {scope})", file=sys.stderr)
    print("the secret is shown once; store it now:", file=sys.stderr)
    sys.stderr.flush()
    print(new.secret)
    return 0


def run_list(args: argparse.Namespace) -> int:
    """List tokens as a table or JSON."""
    found = with_client(args, lambda ej: ej.store.read(token_store.list_tokens))
    rows = [
        {
            "id": t.id,
            "org": t.org if t.org is not None else "*",
            "role": t.role,
            "name": t.name,
            "created": iso_ms(t.created_at),
            "revoked": iso_ms(t.revoked_at),
        }
        for t in found
    ]
    if args.json:
        print_json(rows)
    else:
        headers = ["id", "org", "role", "name", "created", "revoked"]
        print_table(headers, [[row[h] for h in headers] for row in rows])
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    """Revoke a token (its sessions end at once)."""
    now = SystemClock().now_ms()
    info = with_client(
        args,
        lambda ej: ej.store.write(
            partial(revoke_token_audited, actor=CLI_ACTOR, token_id=args.token_id, now=now)
        ),
    )
    if info.revoked_at is not None and info.revoked_at < now:
        print(f"token {info.id} was already revoked at {iso_ms(info.revoked_at)}", file=sys.stderr)
    else:
        print(f"revoked token {info.id}", file=sys.stderr)
    return 0
