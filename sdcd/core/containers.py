"""Containers: what ``docker create/start/stop/rm/...`` decide.

The service keeps Redis (the system of record) and the compute node in step. The node
owns the run state: its events (start, die, oom, ...) are the only thing that changes a
container's ``ContainerState`` once it exists, apart from the removal itself.
"""

from __future__ import annotations

import ipaddress
import random
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from sdcd import timestamps
from sdcd.compute import stats as stats_shape
from sdcd.compute.interface import ComputeError
from sdcd.core import commit, createspec, names, packages, placement
from sdcd.core.errors import (
    Conflict,
    CoreError,
    Forbidden,
    InvalidArgument,
    NotFound,
    NotImplementedYet,
    NotModified,
    Unavailable,
)
from sdcd.core.events import EventLog, container_event
from sdcd.core.images import ImageService, require_provisioning, short_id
from sdcd.store.interface import AlreadyExists
from sdcd.store.ipam import NoAddressesLeft
from sdcd.store.nodes import DOWN_AFTER_SECONDS
from sdcd.store.records import Account, ContainerRecord, ContainerState, LayerRecord

PACKAGE_LABEL = "com.joyent.package"
#: On ``docker build``'s containers: which build made them, and with several sdcd
#: instances which one runs it (``<instance>/<build id>``). A build lives in the sdcd
#: process that runs it, so one that outlived its instance is removed: at that
#: instance's start, or by any other once the instance stopped beating.
BUILD_LABEL = "com.joyent.sdcd.build"
NETWORK_NAME = "bridge"
DEFAULT_STOP_TIMEOUT = 10
ZERO_TIME = "0001-01-01T00:00:00Z"
RUNNING = ("running", "paused", "restarting")
#: How a container's state says its node is down (``docker ps`` adds "(node down)").
NODE_DOWN = "its compute node has not been heard from"
#: Which compute node a container was placed on (a label, as Triton shows it).
NODE_LABEL = "com.joyent.sdcd.node"
#: A container recorded this recently but not on its node yet is a create in flight
#: (not "lost") when a node's events are resynchronised.
CREATE_GRACE_SECONDS = 120


def _state_from_node(node: dict, old: ContainerState) -> ContainerState:
    return ContainerState(
        status=node.get("status", old.status),
        pid=node.get("pid") or 0,
        exit_code=node.get("exit_code", old.exit_code) or 0,
        oom_killed=bool(node.get("oom_killed", False)),
        error=node.get("error") or "",
        started_at=node.get("started_at") or old.started_at,
        finished_at=node.get("finished_at") or old.finished_at,
        restart_count=node.get("restart_count", old.restart_count) or 0,
        removing=old.removing,
    )


class _Waiters:
    """In-process waiters for state changes of a container (``docker wait``)."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[tuple[Callable, defer.Deferred]]] = defaultdict(list)

    def wait(self, cid: str, predicate: Callable[[str, ContainerState | None], bool]):
        d: defer.Deferred = defer.Deferred()
        self._waiting[cid].append((predicate, d))
        return d

    def forget(self, cid: str, d: defer.Deferred) -> None:
        """A waiter no longer needed."""
        kept = [(p, w) for p, w in self._waiting.get(cid, []) if w is not d]
        if kept:
            self._waiting[cid] = kept
        else:
            self._waiting.pop(cid, None)

    def notify(self, cid: str, action: str, state: ContainerState | None) -> None:
        keep = []
        for predicate, d in self._waiting.pop(cid, []):
            if predicate(action, state):
                d.callback(state)
            else:
                keep.append((predicate, d))
        if keep:
            self._waiting[cid].extend(keep)


class ContainerService:
    """The container operations of one datacenter (one compute node for now)."""

    log = Logger()

    def __init__(
        self,
        store,
        images: ImageService,
        fleet,
        ipam,
        package_list: tuple[packages.Package, ...],
        network: dict[str, Any] | None,
        default_memory_mib: int = 1024,
        nodes=None,
        overcommit: tuple[float, float] = (1.0, 1.0),
        clock: Callable[[], float] = time.time,
        instance: str = "",
        live_instances: Callable[[], Any] | None = None,
    ) -> None:
        self._store = store
        self._nodes = nodes
        self._images = images
        #: node id -> ICompute (``sdcd.compute.fleet.Fleet``).
        self._fleet = fleet
        self._ipam = ipam
        self._packages = package_list
        #: {"name", "subnet", "gateway", "prefix"} of the in-process node's bridge
        #: network (None without one); other nodes' come from the node registry.
        self._network = network
        self._default_memory = default_memory_mib
        #: Memory and disk overcommit ratios placement reserves against.
        self._overcommit = overcommit
        self._clock = clock
        #: This sdcd's name among several, and (async) the names of those alive.
        self.instance = instance
        self._live_instances = live_instances
        self._waiters = _Waiters()
        #: login -> {cid: Placed} of creates placed but not recorded yet.
        self._placing: defaultdict[str, dict] = defaultdict(dict)
        self.events = EventLog()
        self._rng = random.Random()
        fleet.subscribe(self._on_event)

    # -- lookups ----------------------------------------------------------------------

    async def get(self, account: Account, ref: str) -> tuple[ContainerRecord, ContainerState]:
        """A container of the account by full id, name or unique id prefix."""
        found = await self._find(account.login, ref)
        if found is None:
            raise NotFound(f"No such container: {ref}")
        return found

    async def _find(self, login: str, ref: str):
        ref = ref.removeprefix("/")
        if not ref:
            return None
        if re.fullmatch(r"[0-9a-f]{64}", ref):
            found = await self._store.get_container(login, ref)
            if found:
                return found
        cid = await self._store.container_by_name(login, ref)
        if cid:
            return await self._store.get_container(login, cid)
        if re.fullmatch(r"[0-9a-f]{1,63}", ref):
            matches = [
                pair
                for pair in await self._store.list_containers(login)
                if pair[0].id.startswith(ref)
            ]
            if len(matches) > 1:
                raise InvalidArgument(f"multiple IDs found with provided prefix: {ref}")
            return matches[0] if matches else None
        return None

    async def node(self, record: ContainerRecord) -> dict[str, Any] | None:
        """The registry's record of the compute node the container is on (None if the
        registry does not know it)."""
        if self._nodes is None:
            return None
        for node in await self._nodes.nodes():
            if node["id"] == record.node:
                return node
        return None

    async def list(self, account: Account) -> list[tuple[ContainerRecord, ContainerState]]:
        """The account's containers; those on a node that stopped answering show the
        state it last reported, saying so."""
        pairs = await self._store.list_containers(account.login)
        down = await self.down_nodes()
        if not down:
            return pairs
        return [(r, self.as_seen(r, s, down)) for r, s in pairs]

    async def down_nodes(self) -> dict[str, float]:
        """node id -> last heartbeat, of the nodes that missed theirs."""
        if self._nodes is None:
            return {}
        now = self._clock()
        return {
            n["id"]: n["last_seen"]
            for n in await self._nodes.nodes()
            if placement.silence(n, now) > DOWN_AFTER_SECONDS
        }

    @staticmethod
    def as_seen(record: ContainerRecord, state: ContainerState, down: dict[str, float]):
        """``state`` as last reported, marked when its node is down."""
        if record.node not in down:
            return state
        since = timestamps.from_unix(down[record.node])
        error = f"{NODE_DOWN} since {since}: this is the state it last reported"
        return ContainerState(**{**state.to_json(), "error": error})

    # -- create -----------------------------------------------------------------------

    async def create(
        self, account: Account, body: dict, version: tuple[int, int], name: str | None
    ) -> tuple[str, list[str]]:
        """``POST /containers/create``: (id, warnings)."""
        require_provisioning(account)
        createspec.refusals_check(body)
        config, host_config = createspec.normalize_create(body, version)
        _refuse_unbuilt_volumes(host_config)
        _tmpfs(host_config)  # a bad option fails the create, before anything is made
        if name:
            name = names.valid_name(name)
        image = await self._images.resolve(account, config.get("Image") or "")
        image_config = self._images.config(image).get("config") or {}
        package = packages.select_package(
            self._packages,
            config.get("Labels") or {},
            createspec.parse_memory(host_config),
            self._default_memory,
        )
        cid = secrets.token_hex(32)
        args = createspec.merge_command(image_config, config)
        config = self._effective_config(cid, config, image_config, image, package)
        host_config["RestartPolicy"] = createspec.restart_policy(host_config)
        ports = createspec.parse_ports(
            config.get("ExposedPorts") or {},
            host_config.get("PortBindings") or {},
            bool(host_config.get("PublishAllPorts")),
        )
        host_config["PortBindings"] = ports
        host_config["Memory"] = package.memory * 1024 * 1024
        await self._create(account, cid, name, config, host_config, image, package, ports, args)
        return cid, createspec.resource_warnings(host_config)

    def _effective_config(self, cid, config, image_config, image, package) -> dict:
        """Config as dockerd stores it: the image's defaults filled in."""
        config = dict(config)
        config["Hostname"] = config.get("Hostname") or cid[:12]
        config["Env"] = createspec.merge_env(image_config.get("Env") or [], config.get("Env") or [])
        for key in ("WorkingDir", "User", "StopSignal"):
            if not config.get(key) and image_config.get(key):
                config[key] = image_config[key]
        config["Entrypoint"], config["Cmd"] = createspec.merge_entrypoint_cmd(image_config, config)
        exposed = dict(image_config.get("ExposedPorts") or {})
        exposed.update(config.get("ExposedPorts") or {})
        config["ExposedPorts"] = exposed or None
        volumes = dict(image_config.get("Volumes") or {})
        volumes.update(config.get("Volumes") or {})
        config["Volumes"] = volumes or None
        labels = dict(image_config.get("Labels") or {})
        labels.update(config.get("Labels") or {})
        labels[PACKAGE_LABEL] = package.name
        config["Labels"] = labels
        config["Image"] = config.get("Image") or image.id
        return config

    async def _create(self, account, cid, name, config, host_config, image, package, ports, args):
        login = account.login
        auto = name is None
        name = name or await self._random_name(login)
        node, network = await self._place(account, cid, name, config, package)
        try:
            return await self._record_and_prepare(
                account, cid, name, auto, node, network, config, host_config, image, package,
                ports, args,
            )  # fmt: skip
        except BaseException:
            # Whatever failed, a container that is not recorded holds nothing (the
            # releases are idempotent; a retried name holds its own, under its record).
            if await self._store.get_container(login, cid) is None:
                await self._ipam.release(network["pool"], cid)
                await self._release_node(node, cid)
            raise
        finally:
            self._placing[login].pop(cid, None)

    async def _record_and_prepare(
        self, account, cid, name, auto, node, network, config, host_config, image, package,
        ports, args,
    ):  # fmt: skip
        login = account.login
        config["Labels"] = {**config["Labels"], NODE_LABEL: node}
        try:
            ip = await self._ipam.allocate(network["pool"], network["subnet"], cid)
        except NoAddressesLeft:
            await self._release_node(node, cid)
            raise placement.NoPlacement(
                f"No compute resources available: node {node}'s subnet "
                f"{network['subnet']} has no address left"
            ) from None
        except Exception:
            await self._release_node(node, cid)
            raise
        record = ContainerRecord(
            id=cid,
            login=login,
            name=name,
            created=timestamps.now(),
            seq=await self._store.next_container_seq(),
            image=config["Image"],
            image_id=image.id,
            config=config,
            host_config=host_config,
            package=package.to_json(),
            node=node,
            network=self._endpoint(ip, network),
            ports=ports,
            args=tuple(args),
        )
        try:
            await self._store.create_container(record, ContainerState())
        except AlreadyExists:
            await self._ipam.release(network["pool"], cid)
            await self._release_node(node, cid)
            if auto:
                return await self._create(
                    account, cid, None, config, host_config, image, package, ports, args
                )
            holder = await self._store.container_by_name(login, name)
            raise Conflict(
                f'Conflict. The container name "/{name}" is already in use by container '
                f'"{holder}". You have to remove (or rename) that container to be able to '
                "reuse that name."
            ) from None
        try:
            compute = await self._fleet.compute(node)
            await compute.prepare(self._node_spec(record, image, package, args))
        except Exception as e:
            await self._undo_create(record)
            raise compute_error(e, record.id) from None
        self.publish(record, "create")
        return []

    async def _place(
        self, account: Account, cid: str, name: str, config: dict, package
    ) -> tuple[str, dict]:
        """The node for a new container, its resources reserved there (atomically: a
        node another create filled meanwhile is dropped and the choice made again), and
        that node's network. Creates of the account still in flight here count as placed
        (their records are not stored yet): concurrent runs spread too."""
        if self._nodes is None:
            local = self._fleet.local
            return local.node_id, self._local_network()
        rules = placement.parse_rules(config.get("Env") or [], config.get("Labels") or {})
        records = {r["id"]: r for r in await self._nodes.nodes() if self._reachable(r)}
        memory_ratio, disk_ratio = self._overcommit
        views = placement.node_views(
            records.values(), self._clock(), DOWN_AFTER_SECONDS, memory_ratio, disk_ratio
        )
        inflight = self._placing[account.login]
        # Copied before the records are read: a create that leaves this map later is in
        # the records (it is recorded before it leaves).
        pending = dict(inflight)
        known = {
            r.id: placement.Placed(r.id, r.name, r.config.get("Labels") or {}, r.node)
            for r, _state in await self._store.list_containers(account.login)
        }
        known.update(pending)
        known.update(inflight)  # (and those placed while the records were read)
        placed = list(known.values())
        labels = config.get("Labels") or {}
        for _attempt in range(5):
            chosen = placement.place(views, placed, rules, package.memory, package.disk)
            # counted at once: decisions made while this reservation is in flight see it
            inflight[cid] = placement.Placed(cid, name, labels, chosen.id)
            held = await self._nodes.reserve(
                chosen.id, cid, package.memory, package.disk, memory_ratio, disk_ratio
            )
            if held:
                return chosen.id, self._node_network(records[chosen.id])
            del inflight[cid]
            views = [v for v in views if v.id != chosen.id]
            if not views:
                break
        raise placement.NoPlacement(
            f"No compute resources available: every node that qualifies for {package.memory}"
            " MiB filled up meanwhile"
        )

    def _reachable(self, record: dict) -> bool:
        """A node this sdcd can call: its own in-process one, or an agent's."""
        local = self._fleet.local
        return bool(record.get("port")) or (local is not None and record["id"] == local.node_id)

    def _local_network(self) -> dict:
        return {**self._network, "pool": self._network["name"]}

    def _node_network(self, record: dict) -> dict:
        """A node's bridge network: the in-process node's as configured; an agent's from
        its registered subnet (the bridge has the subnet's first address). The address
        pool is per subnet, so no address is handed out twice across the fleet."""
        local = self._fleet.local
        if local is not None and record["id"] == local.node_id:
            return self._local_network()
        net = ipaddress.IPv4Network(record["subnet"], strict=False)
        return {
            "name": NETWORK_NAME,
            "subnet": str(net),
            "gateway": record.get("gateway") or str(net.network_address + 1),
            "prefix": net.prefixlen,
            "pool": "bridge:" + str(net),
        }

    async def _release_node(self, node: str, cid: str) -> None:
        if self._nodes is not None:
            await self._nodes.release(node, cid)

    async def _undo_create(self, record: ContainerRecord) -> None:
        try:
            compute = await self._fleet.compute(record.node)
            await compute.remove(record.id)
        finally:
            await self._store.delete_container(record)
            await self._release_address(record)

    async def _release_address(self, record: ContainerRecord) -> None:
        """The container's address and the node resources it held."""
        await self._ipam.release(record.network.get("pool") or NETWORK_NAME, record.id)
        await self._release_node(record.node, record.id)

    async def _random_name(self, login: str) -> str:
        """A free Docker-style name: a few candidates checked one by one (not every
        record read); the create's atomic name check settles races."""
        for _ in range(8):
            candidate = names.random_name(self._rng, lambda _name: False)
            if await self._store.container_by_name(login, candidate) is None:
                return candidate
        suffix = self._rng.randrange(1_000_000)
        return names.random_name(self._rng, lambda _name: False) + str(suffix)

    @staticmethod
    def _endpoint(ip: str, network: dict) -> dict:
        from sdcd.compute.network import mac_for_ip

        return {
            "ip": ip,
            "prefix": network["prefix"],
            "gateway": network["gateway"],
            "mac": mac_for_ip(ip),
            "network": network["name"],
            "pool": network["pool"],
        }

    def _node_spec(self, record: ContainerRecord, image, package, args) -> dict:
        config, host = record.config, record.host_config
        return {
            "id": record.id,
            "owner": record.login,
            "name": "/" + record.name,
            "hostname": config["Hostname"],
            "domainname": config.get("Domainname") or "",
            "args": list(args),
            "env": list(config.get("Env") or []),
            "cwd": config.get("WorkingDir") or "/",
            "user": config.get("User") or "",
            "tty": bool(config.get("Tty")),
            "tty_size": _console_size(config, host),
            "open_stdin": bool(config.get("OpenStdin")),
            "stdin_once": bool(config.get("StdinOnce")),
            "labels": dict(config.get("Labels") or {}),
            "stop_signal": config.get("StopSignal") or "SIGTERM",
            "stop_timeout": _stop_timeout(config, None),
            "resources": package.limits(pids_limit=host.get("PidsLimit")),
            "network": {k: record.network[k] for k in ("ip", "prefix", "gateway", "mac")},
            "dns": list(host.get("Dns") or []),
            "dns_search": list(host.get("DnsSearch") or []),
            "dns_options": list(host.get("DnsOptions") or []),
            "extra_hosts": list(host.get("ExtraHosts") or []),
            "read_only": bool(host.get("ReadonlyRootfs")),
            "tmpfs": _tmpfs(host),
            "volumes": anonymous_volumes(config, host),
            "cap_drop": list(host.get("CapDrop") or []),
            "no_new_privileges": "no-new-privileges" in (host.get("SecurityOpt") or [])
            or "no-new-privileges:true" in (host.get("SecurityOpt") or []),
            "shm_size": host.get("ShmSize") or 64 * 1024 * 1024,
            "restart_policy": host["RestartPolicy"],
            "log_driver": (host.get("LogConfig") or {}).get("Type") or "json-file",
            "image_layers": [
                {
                    "digest": la.digest,
                    "diff_id": la.diff_id,
                    "media_type": la.media_type,
                    "size": la.size,
                }
                for la in image.layers
            ],
        }

    def publish(
        self, record: ContainerRecord, action: str, extra: dict | None = None, share: bool = True
    ) -> None:
        """A container event; ``share`` False for a node's event (every instance hears
        the node itself)."""
        self.events.publish(
            record.login,
            container_event(
                action,
                record.id,
                record.image,
                record.name,
                record.config.get("Labels") or {},
                extra,
            ),
            share,
        )

    # -- run state --------------------------------------------------------------------

    async def start(self, account: Account, ref: str) -> None:
        record, state = await self.get(account, ref)
        if state.status in ("running", "restarting"):
            raise NotModified()
        if state.status == "paused":
            raise Conflict("cannot start a paused container, try unpause instead")
        require_provisioning(account)
        try:
            compute = await self._fleet.compute(record.node)
            node_state = await compute.start(record.id)
        except Exception as e:
            node = await self._node_state(record)
            if node:
                await self._update(record, "die", node)
            if record.host_config.get("AutoRemove"):
                found = await self._store.get_container(record.login, record.id)
                if found:
                    await self._destroy(*found)
            raise compute_error(e, record.id) from None
        await self._update(record, "start", node_state)

    async def stop(self, account: Account, ref: str, timeout: int | None) -> None:
        record, state = await self.get(account, ref)
        if state.status not in RUNNING:
            raise NotModified()
        node_state = await self._call("stop", record, _stop_timeout(record.config, timeout))
        await self._update(record, "stop", node_state)
        self.publish(record, "stop")

    async def restart(self, account: Account, ref: str, timeout: int | None) -> None:
        record, state = await self.get(account, ref)
        if state.status in RUNNING:
            node_state = await self._call("stop", record, _stop_timeout(record.config, timeout))
            await self._update(record, "stop", node_state)
        node_state = await self._call("start", record)
        await self._update(record, "restart", node_state)
        self.publish(record, "restart")

    async def kill(self, account: Account, ref: str, signal: str | None) -> None:
        record, state = await self.get(account, ref)
        if state.status not in RUNNING or state.status == "restarting":
            raise Conflict(f"Cannot kill container: {ref}: Container {record.id} is not running")
        sig = _signal(signal or "KILL")
        self.publish(record, "kill", {"signal": sig})
        await self._call("kill", record, sig)

    async def pause(self, account: Account, ref: str) -> None:
        record, state = await self.get(account, ref)
        if state.status == "paused":
            raise Conflict(f"Container {record.id} is already paused")
        if state.status != "running":
            raise Conflict(f"Container {record.id} is not running")
        await self._call("pause", record)
        await self._update(record, "pause", await self._node_state(record))

    async def unpause(self, account: Account, ref: str) -> None:
        record, state = await self.get(account, ref)
        if state.status != "paused":
            raise Conflict(f"Container {record.id} is not paused")
        await self._call("unpause", record)
        await self._update(record, "unpause", await self._node_state(record))

    async def top(self, account: Account, ref: str, ps_args: str) -> dict:
        record, state = await self.get(account, ref)
        if state.status not in ("running", "paused"):
            raise Conflict(f"Container {record.id} is not running")
        return await self._call("top", record, ps_args or "-ef")

    async def resize(self, account: Account, ref: str, height: int, width: int) -> None:
        """Running: now. Created (``docker start -ai``, attach-then-start): kept by the
        node and applied when it starts, so the first output already has the size."""
        record, state = await self.get(account, ref)
        if state.status not in ("running", "paused", "created"):
            raise Conflict(f"Container {record.id} is not running")
        await self._call("resize", record, height, width)

    async def wait(self, account: Account, ref: str, condition: str) -> ContainerState:
        """``POST /wait``: the state once ``condition`` holds."""
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidArgument(f"invalid condition: {condition}")
        record, state = await self.get(account, ref)

        def done(action: str, new: ContainerState | None) -> bool:
            if condition == "removed":
                return action == "destroy"
            return action in ("die", "destroy")

        # Waiting first, then looking: an exit recorded while the state was read is
        # seen either way (it could otherwise notify before the waiter is in place).
        waiting = self._waiters.wait(record.id, done)
        if condition == "not-running":
            found = await self._store.get_container(record.login, record.id)
            current = found[1] if found is not None else state
            if found is None or current.status not in RUNNING:
                self._waiters.forget(record.id, waiting)
                return current
        last = await waiting
        return last if last is not None else state

    async def rename(self, account: Account, ref: str, new_name: str) -> None:
        record, _ = await self.get(account, ref)
        new_name = names.valid_name(new_name)
        if new_name == record.name:
            raise Conflict("Renaming a container with the same name as its current name")
        try:
            renamed = await self._store.rename_container(record, new_name)
        except AlreadyExists:
            holder = await self._store.container_by_name(account.login, new_name)
            raise Conflict(
                f'Conflict. The container name "/{new_name}" is already in use by container '
                f'"{holder}". You have to remove (or rename) that container to be able to '
                "reuse that name."
            ) from None
        self.publish(renamed, "rename", {"oldName": "/" + record.name})

    async def remove(self, account: Account, ref: str, force: bool) -> None:
        record, state = await self.get(account, ref)
        if state.status in RUNNING and not force:
            action = "unpause and then stop" if state.status == "paused" else "stop"
            raise Conflict(
                f"You cannot remove a {state.status} container {record.id}. "
                f"Please {action} the container before attempting removal or force remove"
            )
        await self._destroy(record, state)

    async def _destroy(self, record: ContainerRecord, state: ContainerState) -> None:
        await self._store.set_container_state(
            record.login, record.id, ContainerState(**{**state.to_json(), "removing": True})
        )
        await self._call("remove", record)
        await self._store.delete_container(record)
        await self._release_address(record)
        self._waiters.notify(record.id, "destroy", state)
        self.publish(record, "destroy")

    async def logs(self, account: Account, ref: str, options: dict, consumer) -> None:
        record, _ = await self.get(account, ref)
        log_type = (record.host_config.get("LogConfig") or {}).get("Type") or "json-file"
        if log_type == "none":
            raise NotImplementedYet("configured logging driver does not support reading")
        await self._call("logs", record, options, consumer)

    async def attach(self, account: Account, cid: str, options: dict, sink):
        """Join the container's stdio (from its next start when it is not running)."""
        record = await self._record(account, cid)
        return await self._call("attach", record, options, sink)

    async def run_attached(self, account: Account, cid: str, sink) -> ContainerState:
        """Start a created container with its stdout and stderr going to ``sink`` and
        answer its state once it has exited and its output has ended (``docker build``'s
        RUN). The exit waiter is in place before the start, so a quick exit is not missed."""
        options = {"stdin": False, "stdout": True, "stderr": True}
        session = await self.attach(account, cid, options, sink)
        exited = self._waiters.wait(cid, lambda action, _state: action in ("die", "destroy"))
        try:
            await self.start(account, cid)
        except BaseException:
            session.close()
            raise
        state = await exited
        await session.done
        if state is None:
            _record, state = await self.get(account, cid)
        return state

    async def layer(self, account: Account, ref: str) -> dict:
        """The container's changes as a layer in the blob store (``docker build``'s
        commit of a step; ``commit`` makes a whole image)."""
        record, _ = await self.get(account, ref)
        return await self._call("commit_layer", record)

    async def replay_logs(self, account: Account, cid: str, consumer) -> None:
        """The kept log, for ``attach?logs=1``."""
        options = {"follow": False, "tail": None, "since": None, "until": None}
        record = await self._record(account, cid)
        await self._call("logs", record, options, consumer)

    def prune_layers(self) -> None:
        d = defer.ensureDeferred(self._prune_layers())
        d.addCallback(lambda gone: gone and self.log.info("pruned {n} layers", n=len(gone)))
        d.addErrback(lambda f: self.log.failure("pruning layers", f))

    async def _prune_layers(self) -> list[str]:
        gone: list[str] = []
        for compute in self._fleet.known().values():
            try:
                gone += await compute.prune_layers()
            except ComputeError as e:
                self.log.warn("pruning layers: {e}", e=e.message)
        return gone

    async def disk_usage(self, record: ContainerRecord) -> dict:
        compute = await self._fleet.compute(record.node)
        return await compute.disk_usage(record.id)

    async def commit(self, account: Account, ref: str, options: dict) -> str:
        """``docker commit``: the container's changes as a new layer on its image, with
        ``options["changes"]`` applied to its config; the image is the account's. A
        running container is paused meanwhile (``pause``, default) for a consistent
        layer. ``options``: repo, tag, author, comment, changes (list), pause, config."""
        require_provisioning(account)
        name = self._images.check_name(options.get("repo") or "", options.get("tag"))
        record, state = await self.get(account, ref)
        config = commit.apply_changes(
            {**record.config, **(options.get("config") or {})}, options.get("changes") or []
        )
        labels = {
            k: v
            for k, v in (config.get("Labels") or {}).items()
            if k not in (PACKAGE_LABEL, NODE_LABEL)
        }
        config["Labels"] = labels or None
        base = await self._images.resolve(account, record.image_id)
        pause = options.get("pause", True) and state.status == "running"
        if pause:
            await self._call("pause", record)
        try:
            layer = await self._call("commit_layer", record)
        finally:
            if pause:
                await self._call("unpause", record)
        new_config = commit.image_config(
            self._images.config(base),
            config,
            layer["diff_id"],
            container_id=record.id,
            created=timestamps.now(),
            author=options.get("author") or "",
            comment=options.get("comment") or "",
            created_by=" ".join(record.args),
        )
        layers = (*base.layers, LayerRecord(layer["digest"], layer["diff_id"], layer["size"],
                                            layer["media_type"]))  # fmt: skip
        image_id = await self._images.add_image(account, new_config, layers, base.id, name)
        self.publish(record, "commit", {"comment": options.get("comment") or ""})
        return image_id

    async def archive_stat(self, account: Account, ref: str, path: str) -> dict:
        record, _ = await self.get(account, ref)
        return await self._call("archive_stat", record, path, path_errors=True)

    async def archive_get(self, account: Account, ref: str, path: str, consumer) -> None:
        record, _ = await self.get(account, ref)
        await self._call("archive_get", record, path, consumer, path_errors=True)

    async def archive_put(self, account: Account, ref: str, path: str, read, no_overwrite) -> None:
        """Copy into the container; refused for a read-only root, as dockerd."""
        record, _ = await self.get(account, ref)
        if record.host_config.get("ReadonlyRootfs"):
            raise Forbidden("container rootfs is marked read-only")
        await self._call("archive_put", record, path, read, no_overwrite, path_errors=True)

    async def changes(self, account: Account, ref: str) -> list[dict]:
        record, _ = await self.get(account, ref)
        return await self._call("changes", record)

    async def export(self, account: Account, ref: str, consumer) -> None:
        record, _ = await self.get(account, ref)
        await self._call("export", record, consumer)

    async def stats(self, record: ContainerRecord, previous: dict | None) -> dict:
        """One ``docker stats`` sample from the node, with ``previous`` (the stream's last
        sample) as its precpu part, named as the account knows the container."""
        sample = await self._call("stats", record)
        sample = stats_shape.with_previous(sample, previous)
        sample["name"] = "/" + record.name
        return sample

    # -- node events ------------------------------------------------------------------

    def _on_event(self, event: dict) -> None:
        d = defer.ensureDeferred(self._apply_event(event))
        d.addErrback(lambda f: self.log.failure("applying node event {e}", f, e=event))

    async def _apply_event(self, event: dict) -> None:
        if event["action"] == "resync":
            await self._resync(event["node"])
            return
        login, cid = event.get("owner"), event["id"]
        found = await self._store.get_container(login, cid) if login else None
        if found is None:
            return
        record, _ = found
        await self._update(record, event["action"], event["state"])
        extra = (
            {"exitCode": str(event["state"].get("exit_code", 0))}
            if event["action"] == "die"
            else None
        )
        self.publish(record, event["action"], extra, share=False)
        if event["action"] == "die" and record.host_config.get("AutoRemove"):
            fresh = await self._store.get_container(login, cid)
            if fresh and fresh[1].status not in RUNNING:
                await self._destroy(*fresh)

    async def _resync(self, node_id: str) -> None:
        """The node's events reached us again (sdcd or the agent restarted, or the
        connection broke): what happened meanwhile is read from the node itself."""
        compute = await self._fleet.compute(node_id)
        report, _seen = await self.reconcile_node(node_id, compute)
        if any(report.values()):
            self.log.warn("node {node} resynchronised: {report}", node=node_id, report=report)

    async def _update(self, record: ContainerRecord, action: str, node: dict | None) -> None:
        found = await self._store.get_container(record.login, record.id)
        if found is None or node is None:
            return
        state = _state_from_node(node, found[1])
        await self._store.set_container_state(record.login, record.id, state)
        self._waiters.notify(record.id, action, state)

    async def reconcile(self) -> dict:
        """At start-up: make Redis agree with what every reachable node runs (a node
        that does not answer is left as it is: its resync comes when it is back). With
        an in-process node (one sdcd owns the datacenter) leftover build containers and
        leaked addresses of its network go too."""
        report: dict[str, list] = {"lost": [], "orphans": [], "leaked_ips": [], "builds": []}
        owners: set[str] = set()
        for node_id, compute in self._fleet.known().items():
            try:
                part, seen = await self.reconcile_node(node_id, compute, startup=True)
            except ComputeError as e:
                self.log.warn("node {node} not reconciled: {e}", node=node_id, e=e.message)
                continue
            owners |= seen
            for key, values in part.items():
                report[key] += values
        if self._fleet.local is not None:
            report["leaked_ips"] = await self._release_leaked_addresses(owners)
        return report

    async def reconcile_node(self, node_id: str, compute, startup: bool = False):
        """Redis against one node: states from the node; a container the node lost is
        marked exited; one the node holds that Redis does not know is removed. Returns
        (report, every container id seen)."""
        held = await compute.list()
        known = await self._store.node_containers(node_id)
        lost, orphans, builds = [], [], []
        known_ids = set()
        live = await self._live_instances() if self._live_instances is not None else None
        for login, cid in known:
            found = await self._store.get_container(login, cid)
            if found is None:
                continue
            known_ids.add(cid)
            record, state = found
            build = (record.config.get("Labels") or {}).get(BUILD_LABEL)
            if build is not None and self._build_is_over(build, startup, live):
                builds.append(cid)
                await self._remove_leftover_build(record, state)
                continue
            if cid in held:
                await self._update(record, "sync", held[cid])
            elif startup or not self._being_created(record, state):
                if not state.removing:
                    lost.append(cid)
                await self._mark_lost(record, state)
        for cid in held:
            if cid not in known_ids:  # (held was read first: a create records, then prepares)
                orphans.append(cid)
                self.log.warn("node holds unknown container {cid}: removing it", cid=cid)
                await compute.remove(cid)
        return {"lost": lost, "orphans": orphans, "builds": builds}, known_ids | set(held)

    async def sweep_builds(self) -> list[str]:
        """Remove the build containers of instances that stopped beating (run when one
        did: a build lives in the process that serves it)."""
        if self._live_instances is None:
            return []
        live = await self._live_instances()
        removed = []
        for node_id in self._fleet.known():
            for login, cid in await self._store.node_containers(node_id):
                found = await self._store.get_container(login, cid)
                build = (found[0].config.get("Labels") or {}).get(BUILD_LABEL) if found else None
                if build is not None and self._build_is_over(build, False, live):
                    removed.append(cid)
                    await self._remove_leftover_build(*found)
        return removed

    def build_label(self, build_id: str) -> str:
        """The BUILD_LABEL value of a build this instance runs."""
        return f"{self.instance}/{build_id}" if self.instance else build_id

    def _build_is_over(self, label: str, startup: bool, live: set[str] | None) -> bool:
        """Whether a build container outlived its build: its instance restarted (we are
        it, starting) or stopped beating. Without instance names (one sdcd) every build
        is this process's, over at start-up."""
        owner = label.split("/", 1)[0] if "/" in label else ""
        if owner == self.instance:
            return startup
        return live is not None and owner not in live

    def _being_created(self, record: ContainerRecord, state: ContainerState) -> bool:
        """A create in flight through some sdcd: recorded, not yet on the node."""
        if state.status != "created" or state.started_at:
            return False
        age = self._clock() - timestamps.parse(record.created)
        return age < CREATE_GRACE_SECONDS

    async def _remove_leftover_build(self, record: ContainerRecord, state) -> None:
        try:
            await self._destroy(record, state)
        except Exception:  # the node lost it: the record and address still go
            self.log.failure("removing build container {cid}", cid=record.id)
            await self._store.delete_container(record)
            await self._release_address(record)

    async def _release_leaked_addresses(self, owners: set[str]) -> list[str]:
        """Addresses whose owner is no container at all (a create that crashed between
        taking the address and recording the container). Run before the API serves, so
        no create is in flight."""
        network = self._network["name"]  # the in-process node's
        leaked = []
        for ip, owner in (await self._ipam.allocations(network)).items():
            if owner not in owners:
                leaked.append(ip)
                await self._ipam.release(network, owner)
        return leaked

    async def _mark_lost(self, record: ContainerRecord, state: ContainerState) -> None:
        if state.removing:
            await self._store.delete_container(record)
            await self._release_address(record)
            return
        self.log.warn("node lost container {cid}", cid=record.id)
        lost = ContainerState(
            **{
                **state.to_json(),
                "status": "exited",
                "pid": 0,
                "error": "the compute node no longer holds this container",
                "exit_code": state.exit_code if state.status == "exited" else 255,
                "finished_at": state.finished_at if state.status == "exited" else timestamps.now(),
            }
        )
        await self._store.set_container_state(record.login, record.id, lost)

    async def _call(self, method: str, record: ContainerRecord, *args, path_errors: bool = False):
        """Call the container's node (``method`` with the container id first); its
        errors as core errors. With ``path_errors`` a "not found" is about the path asked
        for (the container was found), and says so in the node's words."""
        try:
            compute = await self._fleet.compute(record.node)
            return await getattr(compute, method)(record.id, *args)
        except ComputeError as e:
            if path_errors and e.kind == "not_found":
                raise NotFound(e.message) from None
            raise compute_error(e, record.id) from None

    async def _record(self, account: Account, cid: str) -> ContainerRecord:
        found = await self._store.get_container(account.login, cid)
        if found is None:
            raise NotFound(f"No such container: {cid}")
        return found[0]

    async def _node_state(self, record: ContainerRecord) -> dict | None:
        """What the node says of the container (None when it cannot say)."""
        try:
            compute = await self._fleet.compute(record.node)
            return await compute.state(record.id)
        except ComputeError:
            return None

    async def compute_for(self, login: str, cid: str):
        """The ICompute of the node that holds the account's container ``cid``."""
        found = await self._store.get_container(login, cid)
        if found is None:
            raise NotFound(f"No such container: {cid}")
        return await self._fleet.compute(found[0].node)


def _refuse_unbuilt_volumes(host_config: dict) -> None:
    """Named volumes and --volumes-from need the volume service (not built yet): say so
    rather than run without them. Anonymous volumes (``-v /data``) stay in the
    container's own filesystem, removed with it, as an anonymous volume is by ``rm -v``."""
    for bind in host_config.get("Binds") or ():
        source, _, _ = createspec.parse_bind(bind)
        if source:
            raise NotImplementedYet(f"named volumes are not implemented yet: -v {bind}")
    for mount in host_config.get("Mounts") or ():
        if mount.get("Type") == "volume" and mount.get("Source"):
            raise NotImplementedYet(
                f"named volumes are not implemented yet: --mount source={mount['Source']}"
            )
    if host_config.get("VolumesFrom"):
        raise NotImplementedYet("--volumes-from is not implemented yet")


def anonymous_volumes(config: dict, host_config: dict) -> list[str]:
    """Destinations of the container's anonymous volumes: the image's and ``-v /path``
    and ``--mount type=volume`` without a name."""
    found = set(config.get("Volumes") or {})
    for bind in host_config.get("Binds") or ():
        _, destination, _ = createspec.parse_bind(bind)
        found.add(destination)
    for mount in host_config.get("Mounts") or ():
        if mount.get("Type") == "volume":
            found.add(mount["Target"])
    return sorted(found)


#: What a ``--tmpfs`` option string may say (passed on to mount(8) by the node).
TMPFS_FLAGS = ("rw", "ro", "nosuid", "suid", "nodev", "dev", "noexec", "exec")


def _tmpfs(host_config: dict) -> dict:
    """--tmpfs and --mount type=tmpfs as {destination: options}; 400 for an option the
    node would not take (checked here, so that create fails, not a later start)."""
    mounts = dict(host_config.get("Tmpfs") or {})
    for mount in host_config.get("Mounts") or ():
        if mount.get("Type") == "tmpfs":
            size = (mount.get("TmpfsOptions") or {}).get("SizeBytes")
            mounts[mount["Target"]] = f"size={size}" if size else ""
    for destination, options in mounts.items():
        for opt in filter(None, (options or "").split(",")):
            key, _, value = opt.partition("=")
            valid = opt in TMPFS_FLAGS or (key in ("size", "mode") and value.isalnum())
            if not valid:
                raise InvalidArgument(f"invalid tmpfs option {opt!r} for {destination}")
    return mounts


def _console_size(config: dict, host_config: dict) -> list[int] | None:
    """``HostConfig.ConsoleSize`` ([height, width], sent by current CLIs with ``-t``):
    the tty's size at start. The CLI's own resize comes only after start, too late for a
    first ``stty size``; dockerd honours it from API 1.42, and it costs nothing here."""
    size = host_config.get("ConsoleSize")
    if not config.get("Tty") or not size or size == [0, 0]:
        return None
    if not (isinstance(size, list) and len(size) == 2) or not all(
        isinstance(v, int) and 0 < v < 65536 for v in size
    ):
        raise InvalidArgument("ConsoleSize must be [height, width]")
    return list(size)


def _stop_timeout(config: dict, timeout: int | None) -> int:
    if timeout is not None:
        return timeout
    value = config.get("StopTimeout")
    return DEFAULT_STOP_TIMEOUT if value is None else int(value)


def _signal(value: str) -> str:
    value = value.upper()
    if value.isdigit():
        return value
    return value if value.startswith("SIG") else "SIG" + value


def compute_error(e: Exception, cid: str) -> Exception:
    """The core error a node error means for container ``cid``."""
    if isinstance(e, CoreError):
        return e
    if isinstance(e, ComputeError):
        if e.kind == "not_found":
            return NotFound(f"No such container: {cid}")
        if e.kind == "conflict":
            return Conflict(e.message)
        if e.kind == "invalid":
            return InvalidArgument(e.message)
        if e.kind == "unavailable":
            return Unavailable(e.message)
        return CoreError(e.message)
    return e


__all__ = ["ContainerService", "compute_error", "short_id"]
