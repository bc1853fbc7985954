"""``twistd sdcd-agent``: one compute node of the datacenter.

The agent runs the node's ``LocalCompute`` (runc through conmon, overlayfs, its own
bridge), serves it to sdcd instances over the internal API (mutual TLS with the node
certificate ``sdcd-admin node enrol`` issued), registers the node in Redis and beats,
fetches the image layers it lacks from the image store (any sdcd instance that is up),
and routes to the other nodes' container subnets so that every container reaches every
other. Restarting it leaves containers running; it re-attaches to them at start.
"""

from __future__ import annotations

import ipaddress
import shutil
import sys
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, task
from twisted.logger import Logger
from twisted.python import usage

from sdcd.agent import server
from sdcd.agent.config import AgentConfig, load
from sdcd.auth import internal
from sdcd.compute import routes
from sdcd.compute.blobcache import BlobCache
from sdcd.compute.heartbeat import Heartbeat, local_node_info
from sdcd.compute.host import host_facts
from sdcd.compute.local import LocalCompute
from sdcd.compute.network import BridgeConfig
from sdcd.config import ConfigError
from sdcd.store import redis as redis_store
from sdcd.store.nodes import HEARTBEAT_SECONDS, RedisAPIRegistry, RedisNodeRegistry

DEFAULT_CONFIG = "/etc/sdcd/sdcd-agent.toml"
MIB = 1024 * 1024


class Options(usage.Options):
    optParameters = [["config", "c", DEFAULT_CONFIG, "Path of the agent's TOML configuration."]]
    longdesc = "Run one compute node of an sdcd datacenter. See etc/sdcd-agent.toml."


class AgentService(service.Service):
    """Open the node, serve it, register it; undo in reverse on stop."""

    log = Logger()

    def __init__(self, reactor: Any, config: AgentConfig, material: internal.Material) -> None:
        self._reactor = reactor
        self.config = config
        self.material = material
        self.node_id = internal.identity_of(material).ident
        self.compute: LocalCompute | None = None
        self.cache: BlobCache | None = None
        self.port: Any = None
        self.pool: Any = None
        self.heartbeat: Heartbeat | None = None
        self._loop: task.LoopingCall | None = None
        self._sources: list[str] = []
        self.ready: defer.Deferred = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        d = defer.ensureDeferred(self._start())
        d.addCallbacks(self.ready.callback, self._failed)

    async def _start(self) -> None:
        cfg = self.config
        self.pool = await redis_store.connect(cfg.redis_url)
        nodes = RedisNodeRegistry(self.pool, cfg.redis_prefix)
        await self._check_subnet(nodes)
        cache = self.cache = BlobCache(
            cfg.data_dir / "blobs",
            lambda: list(self._sources),
            self.material,
            self._reactor,
            max_parallel=cfg.max_fetches,
        )
        bridge = BridgeConfig(cfg.bridge, cfg.subnet)
        self.compute = LocalCompute(
            self._reactor,
            cfg.data_dir / "node",
            cache.path,
            bridge,
            dns=cfg.dns,
            node_id=self.node_id,
            fetch_blob=cache.ensure,
        )
        await self.compute.open()
        if cfg.route_peers:
            await routes.enable_forwarding()
        factory = server.AgentFactory(self.compute, cache)
        try:
            self.port = server.listen(self._reactor, cfg.port, cfg.host, self.material, factory)
        except error.CannotListenError as e:
            raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port}: {e}") from None
        info = self._info(bridge)
        self.heartbeat = Heartbeat(nodes, self.node_id, info, self._reactor)
        await self.heartbeat.start()
        apis = RedisAPIRegistry(self.pool, cfg.redis_prefix)
        await self._follow(nodes, apis)
        self._loop = task.LoopingCall(self._tick, nodes, apis)
        self._loop.clock = self._reactor
        self._loop.start(HEARTBEAT_SECONDS, now=False)
        self.log.info(
            "node {id} serving on {host}:{port}, subnet {subnet}",
            id=self.node_id,
            host=cfg.host,
            port=self.port.getHost().port,
            subnet=cfg.subnet,
        )

    def _info(self, bridge: BridgeConfig) -> dict:
        cfg = self.config
        facts = host_facts()
        info = local_node_info(cfg.address, cfg.subnet, cfg.data_dir, facts.mem_total, facts.ncpu)
        if cfg.memory:
            info["memory"] = cfg.memory
        if cfg.disk:
            info["disk"] = cfg.disk
        else:
            info["disk"] = shutil.disk_usage(cfg.data_dir).total // MIB
        info.update(port=self.port.getHost().port, gateway=bridge.gateway)
        return info

    async def _check_subnet(self, nodes: RedisNodeRegistry) -> None:
        """Two nodes with overlapping subnets would hand out one address twice."""
        mine = ipaddress.IPv4Network(self.config.subnet)
        for node in await nodes.nodes():
            if node["id"] != self.node_id and mine.overlaps(
                ipaddress.IPv4Network(node["subnet"], strict=False)
            ):
                raise ConfigError(
                    f"compute.subnet {mine} overlaps node {node['id']}'s {node['subnet']}"
                )

    def _tick(self, nodes: RedisNodeRegistry, apis: RedisAPIRegistry) -> None:
        d = defer.ensureDeferred(self._follow(nodes, apis))
        d.addErrback(lambda f: self.log.failure("following the datacenter", f))

    async def _follow(self, nodes: RedisNodeRegistry, apis: RedisAPIRegistry) -> None:
        """The image store's live URLs, and routes to the other up nodes' subnets."""
        now = self._reactor.seconds()
        self._sources = await apis.urls(now)
        if not self.config.route_peers:
            return
        from sdcd.store.nodes import DOWN_AFTER_SECONDS

        peers = {
            n["subnet"]: n["address"]
            for n in await nodes.nodes()
            if n["id"] != self.node_id and n["silent"] <= DOWN_AFTER_SECONDS * 4
        }
        await routes.sync_routes(peers, self.config.subnet)

    def _failed(self, failure: Any) -> None:
        self.log.failure("sdcd-agent failed to start", failure)
        sys.stderr.write(f"sdcd-agent: failed to start: {failure.getErrorMessage()}\n")
        if self._reactor.running:
            self._reactor.stop()

    async def _stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.port is not None:
            await self.port.stopListening()
        if self.compute is not None:
            await self.compute.close()
        if self.cache is not None:
            await self.cache.close()
        if self.pool is not None:
            await self.pool.disconnect()

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self._stop())


def build(options: Options, reactor: Any) -> AgentService:
    config = load(options["config"])
    try:
        material = internal.Material.read(config.tls_dir, "node")
    except (OSError, internal.PKIError) as e:
        raise ConfigError(
            f"cannot read the node certificate in {config.tls_dir} "
            f"(made by `sdcd-admin node enrol`): {e}"
        ) from None
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return AgentService(reactor, config, material)


def makeService(options: Options, reactor: Any = None) -> service.IService:
    if reactor is None:
        from twisted.internet import reactor
    try:
        return build(options, reactor)
    except ConfigError as e:
        sys.stderr.write(f"sdcd-agent: {e}\n")
        raise SystemExit(1) from None
