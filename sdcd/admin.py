"""``sdcd-admin``: the operator's tool for accounts, their SSH keys, and the compute
nodes' TLS identities.

It works on the same Redis as sdcd. In the embedded mode it uses sdcd's private
redis-server when sdcd is running, and otherwise starts that server itself for the
duration of the command (same socket, same AOF), so accounts can be made before the first
start. Every error is one line on stderr and exit status 1, with nothing changed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from twisted.internet import defer, task

from sdcd import config as sdcd_config
from sdcd.auth import internal
from sdcd.auth.sshkeys import SSHKeyError, parse_authorized_keys
from sdcd.core.accounts import AccountService
from sdcd.core.errors import CoreError, InvalidArgument
from sdcd.store import redis as redis_store
from sdcd.store.embedded import EmbeddedRedis, EmbeddedRedisError, socket_answers
from sdcd.store.nodes import DOWN_AFTER_SECONDS, RedisNodeRegistry
from sdcd.tap import DEFAULT_CONFIG


class AdminError(Exception):
    """A user error: printed as one line, exit status 1."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdcd-admin", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="sdcd's TOML file")
    parser.add_argument("--json", action="store_true", help="print JSON")
    what = parser.add_subparsers(dest="what", required=True)

    account = what.add_parser("account", help="create, list, show, disable, enable accounts")
    verbs = account.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="create an account")
    create.add_argument("login")
    create.add_argument("--approved", action="store_true", help="approve for provisioning")
    verbs.add_parser("list", help="list accounts")
    for verb, text in [
        ("show", "show an account and its keys"),
        ("disable", "refuse every request of the account (403)"),
        ("enable", "undo disable"),
        ("approve", "allow the account to pull and provision"),
        ("revoke", "withdraw provisioning approval"),
    ]:
        verbs.add_parser(verb, help=text).add_argument("login")

    key = what.add_parser("key", help="add, list, remove an account's SSH public keys")
    verbs = key.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser("add", help="add keys from an authorized_keys line or file")
    add.add_argument("login")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("line", nargs="?", help="one authorized_keys line")
    source.add_argument("-f", "--file", help="a .pub or authorized_keys file ('-': stdin)")
    add.add_argument("--name", help="name of the key (default: its comment)")
    verbs.add_parser("list", help="list an account's keys").add_argument("login")
    remove = verbs.add_parser("remove", help="remove a key by name or MD5 fingerprint")
    remove.add_argument("login")
    remove.add_argument("key")

    node = what.add_parser("node", help="enrol a compute node (its agent's TLS identity)")
    verbs = node.add_subparsers(dest="verb", required=True)
    enrol = verbs.add_parser("enrol", help="issue the node's certificate from the internal CA")
    enrol.add_argument("node_id")
    enrol.add_argument(
        "--name",
        action="append",
        default=[],
        required=True,
        help="an address or host name sdcd reaches the node by (repeatable)",
    )
    enrol.add_argument("--out", required=True, help="directory for ca.pem, node.pem, node-key.pem")
    verbs.add_parser("list", help="the registered nodes: up or down, capacity, reserved")
    api = what.add_parser("api-cert", help="issue an sdcd instance's certificate for the agents")
    api.add_argument("name")
    api.add_argument("--out", required=True, help="directory for ca.pem, api.pem, api-key.pem")
    return parser


def _pki(config: sdcd_config.Config, args: argparse.Namespace) -> None:
    """Certificates from the internal CA (made on first use under data_dir); no Redis."""
    ca_cert, ca_key = internal.internal_ca(config.data_dir, config.datacenter)
    if args.what == "node":
        material = internal.issue(ca_cert, ca_key, "node", args.node_id, args.name)
        material.write(Path(args.out), "node")
        print(f"node {args.node_id}: {args.out}/node.pem, node-key.pem, ca.pem")
    else:
        material = internal.issue(ca_cert, ca_key, "api", args.name, [])
        material.write(Path(args.out), "api")
        print(f"api {args.name}: {args.out}/api.pem, api-key.pem, ca.pem")


def _read_keys(args: argparse.Namespace) -> list[str]:
    """The key lines to add, every one validated before anything is stored."""
    if args.file:
        try:
            text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise AdminError(f"cannot read {args.file}: {getattr(e, 'strerror', e)}") from None
    else:
        text = args.line
    try:
        keys = parse_authorized_keys(text)
    except SSHKeyError as e:
        raise AdminError(str(e)) from None
    if not keys:
        raise AdminError("no SSH public key given")
    if args.name and len(keys) > 1:
        raise AdminError("--name applies to one key, not several")
    return [k.openssh for k in keys]


def _account_json(account) -> dict:
    return account.to_json()


def _print_accounts(accounts, as_json: bool) -> None:
    if as_json:
        print(json.dumps([_account_json(a) for a in accounts], indent=2))
        return
    print(f"{'LOGIN':<24} {'UUID':<36} {'DISABLED':<8} {'APPROVED':<8} CREATED")
    for a in accounts:
        print(f"{a.login:<24} {a.uuid:<36} {a.disabled!s:<8} {a.approved!s:<8} {a.created}")


def _print_keys(keys, as_json: bool) -> None:
    if as_json:
        print(json.dumps([k.to_json() for k in keys], indent=2))
        return
    print(f"{'NAME':<32} FINGERPRINT")
    for k in keys:
        print(f"{k.name:<32} {k.fingerprint}")


async def _account(service: AccountService, args: argparse.Namespace) -> None:
    if args.verb == "create":
        account = await service.create(args.login, approved=args.approved)
        _print_accounts([account], args.json)
    elif args.verb == "list":
        _print_accounts(await service.list(), args.json)
    elif args.verb == "show":
        account = await service.get(args.login)
        keys = await service.keys(args.login)
        if args.json:
            print(json.dumps({**account.to_json(), "keys": [k.to_json() for k in keys]}, indent=2))
        else:
            _print_accounts([account], False)
            print()
            _print_keys(keys, False)
    else:
        flags = {
            "disable": {"disabled": True},
            "enable": {"disabled": False},
            "approve": {"approved": True},
            "revoke": {"approved": False},
        }[args.verb]
        _print_accounts([await service.update(args.login, **flags)], args.json)


async def _key(service: AccountService, args: argparse.Namespace) -> None:
    if args.verb == "add":
        lines = _read_keys(args)
        await _check_new_keys(service, args.login, lines)
        added = [await service.add_key(args.login, line, args.name) for line in lines]
        _print_keys(added, args.json)
    elif args.verb == "list":
        _print_keys(await service.keys(args.login), args.json)
    elif args.verb == "remove":
        removed = await service.remove_key(args.login, args.key)
        if not args.json:
            print(f"removed {removed.name} ({removed.fingerprint})")


async def _check_new_keys(service: AccountService, login: str, lines: list[str]) -> None:
    """Refuse a batch of keys if any is registered already, before adding any."""
    existing = {k.openssh.split()[1] for k in await service.keys(login)}
    seen = set()
    for line in lines:
        blob = line.split()[1]
        if blob in existing or blob in seen:
            raise InvalidArgument(f"key {line.split()[0]} ... is already registered with {login}")
        seen.add(blob)


async def _nodes(registry: RedisNodeRegistry, as_json: bool) -> None:
    """Every registered node as placement sees it (memory and disk in MiB)."""
    nodes = await registry.nodes()
    for node in nodes:
        node["up"] = node["silent"] <= DOWN_AFTER_SECONDS
    if as_json:
        print(json.dumps(nodes, indent=2, sort_keys=True))
        return
    header = f"{'ID':36}  {'STATE':5}  {'ADDRESS':15}  {'SUBNET':18}"
    print(header + "  MEMORY (RESERVED)  DISK (RESERVED)")
    for n in nodes:
        print(
            f"{n['id']:36}  {'up' if n['up'] else 'down':5}  {n['address']:15}  "
            f"{n['subnet']:18}  {n['memory']} ({n['reserved_memory']})  "
            f"{n['disk']} ({n['reserved_disk']})"
        )


async def _with_store(reactor, config: sdcd_config.Config, args: argparse.Namespace) -> None:
    """Run the command on sdcd's Redis, starting the embedded one if sdcd is not running."""
    embedded = None
    url = config.redis.url
    if url is None:
        embedded = EmbeddedRedis(reactor, config.data_dir, config.redis.server)
        url = embedded.url
        if socket_answers(embedded.socket_path):
            embedded = None  # sdcd is running and owns it: leave it be
        else:
            embedded.check()
            await embedded.start()
    pool = None
    try:
        pool = await redis_store.connect(url)
        store = redis_store.RedisStateStore(pool, config.redis.prefix)
        if args.what == "node":
            await _nodes(RedisNodeRegistry(pool, config.redis.prefix), args.json)
            return
        service = AccountService(store, time.time)
        await (_account if args.what == "account" else _key)(service, args)
    finally:
        if pool is not None:
            await pool.disconnect()
        if embedded is not None:
            await embedded.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Console script entry point."""
    args = _parser().parse_args(argv)
    try:
        config = sdcd_config.load(args.config)
    except sdcd_config.ConfigError as e:
        sys.exit(f"sdcd-admin: {e}")

    if args.what == "api-cert" or (args.what == "node" and args.verb == "enrol"):
        try:
            _pki(config, args)
        except (internal.PKIError, OSError) as e:
            sys.exit(f"sdcd-admin: {e}")
        return

    async def run(reactor) -> None:
        try:
            await _with_store(reactor, config, args)
        except (AdminError, CoreError, EmbeddedRedisError) as e:
            sys.stderr.write(f"sdcd-admin: {getattr(e, 'message', e)}\n")
            raise SystemExit(1) from None
        except Exception as e:  # connection failures and the like: still one line
            sys.stderr.write(f"sdcd-admin: {type(e).__name__}: {e}\n")
            raise SystemExit(1) from None

    # react() exits the process: 0, or the SystemExit code raised above.
    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
