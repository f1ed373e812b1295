"""`user add | password | list | remove | import`: classroom accounts. Passwords come from a file or stdin, never the
command line (it shows in `ps` and the shell's history), and are never printed."""
from __future__ import annotations

import getpass
import sys
from pathlib import Path

from engine.accounts import users
from engine.accounts.access import AccessDenied
from engine.accounts.actor import ROLES
from engine.cli.common import add_actor_option
from engine.errors import UserError


def _password(args) -> str:
    if args.password_file:
        path = Path(args.password_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"The password file {path.name} could not be read; give a readable UTF-8 text file.") \
                from err
        return text.rstrip("\r\n")
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {args.name}: ")
    return sys.stdin.readline().rstrip("\r\n")


def _only_instructors(args) -> None:
    if args.actor is not None and not args.actor.is_instructor:
        raise AccessDenied("Only an instructor can manage user accounts.")


def cmd_user(args) -> dict:
    _only_instructors(args)
    if args.action == "add":
        return users.add_user(args.name, args.role, _password(args))
    if args.action == "password":
        return users.set_password(args.name, _password(args))
    if args.action == "remove":
        users.remove_user(args.name)
        return {"removed": args.name}
    if args.action == "import":
        return {"added": users.import_users(args.csv)}
    return {"users": users.list_users()}


def register(add) -> None:
    p = add("user", "classroom accounts: add, password, list, remove, import")
    actions = p.add_subparsers(dest="action", required=True)
    one = actions.add_parser("add", help="add a user (password from --password-file or stdin)")
    one.add_argument("name")
    one.add_argument("--role", required=True, help=" or ".join(ROLES))
    one.add_argument("--password-file", default=None, help="a file holding the password (one line)")
    reset = actions.add_parser("password", help="set a new password (from --password-file or stdin); also lifts "
                               "a lock after too many wrong passwords")
    reset.add_argument("name")
    reset.add_argument("--password-file", default=None, help="a file holding the password (one line)")
    actions.add_parser("list", help="list users (names and roles, never passwords)")
    gone = actions.add_parser("remove", help="remove a user (their runs stay)")
    gone.add_argument("name")
    many = actions.add_parser("import", help="add every user of a CSV with columns name,role,password")
    many.add_argument("csv")
    for action in (one, reset, gone, many, actions.choices["list"]):
        add_actor_option(action, nested=True)
    p.set_defaults(handler=cmd_user)
