"""``twistd sdcd``: options and the service tree.

Everything an operator can get wrong is checked in ``makeService``, before twistd
daemonises or starts logging: the configuration, the TLS material, the private Redis,
and the listening ports (bound here, so a busy port fails start-up at once). The ports
accept nothing until Redis answers: they are bound with reading paused and resumed once
the store is connected.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time

from twisted.application import service
from twisted.internet import defer, error, task
from twisted.logger import Logger, globalLogPublisher, jsonFileLogObserver
from twisted.python import usage
from twisted.web.resource import Resource

from sdcd import config as sdcd_config
from sdcd.api.app import DockerAPI
from sdcd.api.containers import ContainerRoutes
from sdcd.api.execs import ExecRoutes
from sdcd.api.halfclose import HalfCloseTLSFactory
from sdcd.api.root import DockerRoot, LoggingSite
from sdcd.auth import internal
from sdcd.auth import tls as sdcd_tls
from sdcd.auth.accounts import Authenticator
from sdcd.cloudapi.app import CloudAPI
from sdcd.compute.fleet import Fleet
from sdcd.compute.heartbeat import Heartbeat, local_node_info
from sdcd.compute.host import host_facts
from sdcd.compute.local import LocalCompute
from sdcd.compute.network import BridgeConfig
from sdcd.core.accounts import AccountService
from sdcd.core.build import BuildService
from sdcd.core.containers import ContainerService
from sdcd.core.execs import ExecService
from sdcd.core.images import ImageService
from sdcd.core.system import SystemService
from sdcd.images import blobserver
from sdcd.images.blobserver import BlobResource
from sdcd.images.blobstore import FileBlobStore
from sdcd.images.registry import RegistryClient
from sdcd.images.tls import SystemAndExtraCAs
from sdcd.store import redis as redis_store
from sdcd.store.embedded import EmbeddedRedis, EmbeddedRedisError
from sdcd.store.eventbus import RedisEventBus
from sdcd.store.ipam import RedisIPAllocator
from sdcd.store.nodes import HEARTBEAT_SECONDS, RedisAPIRegistry, RedisNodeRegistry

DEFAULT_CONFIG = "/etc/sdcd/sdcd.toml"


class Options(usage.Options):
    """Command-line options; everything else is in the TOML file."""

    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "Path of the TOML configuration file."],
    ]
    longdesc = (
        "Serve the Docker Remote API (TLS, client certificates made from SSH keys) and the "
        "CloudAPI subset for a datacenter of compute nodes. See etc/sdcd.toml."
    )


class _Waiting(Resource):
    """Stands in for the API until the store is connected (never reached: reading is
    paused until then)."""

    isLeaf = True

    def render(self, request) -> bytes:
        request.setResponseCode(503)
        return b'{"message": "starting"}\n'


class SdcdService(service.MultiService):
    """Starts Redis (embedded or remote), then wires the store into the sites and lets
    the ports accept connections; stops in the reverse order."""

    log = Logger()

    def __init__(self, reactor, config: sdcd_config.Config, server_tls: sdcd_tls.ServerTLS):
        super().__init__()
        self._reactor = reactor
        self.config = config
        self._tls = server_tls
        self.embedded = (
            None
            if config.redis.url
            else EmbeddedRedis(reactor, config.data_dir, config.redis.server)
        )
        self.sites: dict[str, LoggingSite] = {}
        self.ports: dict[str, object] = {}
        self.store = None
        self.registry = None
        self.compute = None
        self.heartbeat = None
        self.fleet = None
        self.internal_port = None
        self.api_beat = None
        self.api_registry = None
        self.event_bus = None
        self.containers: ContainerService | None = None
        self._live: set[str] = set()
        self.ready: defer.Deferred = defer.Deferred()

    def check(self) -> None:
        """Refuse a data directory another Redis serves (before anything is bound)."""
        if self.embedded is not None:
            self.embedded.check()

    def bind(self) -> None:
        """Bind every endpoint now (a busy port is a start-up error), reading paused."""
        context = sdcd_tls.ServerContextFactory(self._tls)
        endpoints = {"docker": self.config.docker}
        if self.config.cloudapi is not None:
            endpoints["cloudapi"] = self.config.cloudapi
        for name, listen in endpoints.items():
            site = LoggingSite(_Waiting())
            try:
                port = self._reactor.listenTCP(
                    listen.port, HalfCloseTLSFactory(context, False, site), interface=listen.host
                )
            except error.CannotListenError as e:
                self.unbind()
                reason = e.socketError.strerror if e.socketError else str(e)
                raise sdcd_config.ConfigError(
                    f"cannot listen for {name} on {listen.host}:{listen.port}: {reason}"
                ) from None
            port.stopReading()
            # Accepted sockets inherit TCP_NODELAY on Linux. Without it a response that
            # ends in a second small TLS record waits for the client's delayed ACK.
            port.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sites[name], self.ports[name] = site, port

    def unbind(self) -> None:
        for port in self.ports.values():
            port.stopListening()
        self.ports.clear()

    def startService(self) -> None:
        super().startService()
        d = defer.ensureDeferred(self._start())
        d.addErrback(self._failed)

    async def _start(self) -> None:
        url = self.config.redis.url
        if self.embedded is not None:
            await self.embedded.start()
            url = self.embedded.url
        pool = await redis_store.connect(url)
        self._redis_url = url
        self.store = redis_store.RedisStateStore(pool, self.config.redis.prefix)
        await self._wire(self.store, pool)
        for name, port in self.ports.items():
            port.startReading()
            address = port.getHost()
            self.log.info(
                "{name} listening on {host}:{port}", name=name, host=address.host, port=address.port
            )
        self.ready.callback(None)

    async def _wire(self, store, pool) -> None:
        authenticator = Authenticator(store, time.time, self.config.clock_skew)
        facts = host_facts()
        nodes = RedisNodeRegistry(pool, self.config.redis.prefix)
        system = SystemService(store, self.config.datacenter, facts, nodes)
        blobs = FileBlobStore(self.config.blob_dir or self.config.data_dir / "blobs", self._reactor)
        self.registry = RegistryClient(
            self._reactor,
            insecure=self.config.insecure_registries,
            timeout=self.config.registry_timeout,
            ca_files=self.config.registry_ca_files,
        )
        images = ImageService(store, blobs, self.registry)
        containers = self.containers = await self._open_compute(store, pool, images, blobs, nodes)
        if self.api_registry is not None:  # one of several instances, maybe
            await self._share_events(containers, pool)
        exec_routes = ExecRoutes(ExecService(store, containers))
        build = BuildService(
            containers,
            images,
            store,
            self.config.data_dir / "build",
            self.config.max_builds_per_account,
        )
        api = DockerAPI(
            system,
            images,
            ContainerRoutes(containers, time.time, exec_routes),
            exec_routes,
            build,
        )
        self.sites["docker"].resource = DockerRoot(api.resource(), authenticator, self._tls.ca_pem)
        if "cloudapi" in self.sites:
            accounts = AccountService(store, time.time)
            cloud = CloudAPI(authenticator, accounts, self.config.docker_url)
            self.sites["cloudapi"].resource = cloud.resource()

    async def _open_compute(self, store, pool, images, blobs, nodes) -> ContainerService:
        """The datacenter's nodes: the in-process one (bridge up, running containers
        re-attached, heartbeating) unless ``compute.local`` is off, and every agent's
        through the internal API; then Redis reconciled with what they hold."""
        compute_config = self.config.compute
        bridge = BridgeConfig(compute_config.bridge, compute_config.subnet)
        local = None
        if compute_config.local:
            local = self.compute = LocalCompute(
                self._reactor,
                self.config.data_dir / "node",
                blobs.path,
                bridge,
                dns=compute_config.dns,
                node_id=compute_config.node_id,
            )
        material = await self._internal(pool, blobs) if self.config.internal.enabled else None
        self.fleet = Fleet(self._reactor, nodes, material, blobs, local)
        instance, live = "", None
        if self.api_registry is not None:  # one of several instances, maybe
            apis, instance = self.api_registry

            def live():
                return apis.live(self._reactor.seconds())

        network = {
            "name": "bridge",
            "subnet": bridge.subnet,
            "gateway": bridge.gateway,
            "prefix": bridge.prefixlen,
        }
        containers = ContainerService(
            store,
            images,
            self.fleet,
            RedisIPAllocator(pool, self.config.redis.prefix),
            self.config.packages,
            network if local is not None else None,
            compute_config.default_memory,
            nodes,
            (compute_config.memory_overcommit, compute_config.disk_overcommit),
            self._reactor.seconds,
            instance,
            live,
        )
        if local is not None:
            await local.open()
            facts = host_facts()
            info = local_node_info(
                self.config.public_host,
                compute_config.subnet,
                self.config.data_dir,
                facts.mem_total,
                facts.ncpu,
            )
            self.heartbeat = Heartbeat(nodes, local.node_id, info, self._reactor)
            await self.heartbeat.start()
        await self.fleet.start()
        report = await containers.reconcile()
        if any(report.values()):
            self.log.warn("reconciled: {report}", report=report)
        return containers

    async def _internal(self, pool, blobs) -> internal.Material:
        """The internal API's listener (the image store's blobs, for nodes) and this
        instance's heartbeat in the registry of sdcd instances agents read."""
        cfg = self.config.internal
        name = cfg.name or f"{socket.gethostname()}:{self.config.docker.port}"
        if cfg.cert_dir is not None:
            material = internal.Material.read(cfg.cert_dir, "api")
        else:
            ca_cert, ca_key = internal.internal_ca(self.config.data_dir, self.config.datacenter)
            material = internal.issue(ca_cert, ca_key, "api", name, [])
        resource = BlobResource(blobs)
        self.internal_port = blobserver.listen(
            self._reactor, cfg.port, cfg.host, material, resource
        )
        port = self.internal_port.getHost().port
        address = cfg.address or self.config.public_host
        url = f"https://{address}:{port}"
        apis = RedisAPIRegistry(pool, self.config.redis.prefix)
        self.api_beat = task.LoopingCall(self._api_beat, apis, name, url)
        self.api_beat.clock = self._reactor
        await self._api_beat(apis, name, url)
        self.api_beat.start(HEARTBEAT_SECONDS, now=False)
        self.api_registry = (apis, name)
        return material

    async def _share_events(self, containers: ContainerService, pool) -> None:
        """This instance's API events to the others, theirs to this one's clients."""
        reader = await redis_store.connect(self._redis_url, poolsize=1)
        _apis, name = self.api_registry
        self.event_bus = RedisEventBus(pool, reader, self.config.redis.prefix, name, self._reactor)
        containers.events.bus = self.event_bus
        await self.event_bus.start(containers.events.deliver)

    async def _api_beat(self, apis, name: str, url: str) -> None:
        """Beat; and when another instance stopped beating, remove its builds' containers."""
        try:
            await apis.beat(name, url, self._reactor.seconds())
            live = await apis.live(self._reactor.seconds())
            gone, self._live = self._live - live, live
            if gone and self.containers is not None:
                removed = await self.containers.sweep_builds()
                self.log.info(
                    "instances {gone} stopped: {n} build containers removed",
                    gone=sorted(gone),
                    n=len(removed),
                )
        except Exception:
            self.log.failure("instance heartbeat failed")

    def _failed(self, failure) -> None:
        self.log.failure("sdcd failed to start", failure)
        sys.stderr.write(f"sdcd: failed to start: {failure.getErrorMessage()}\n")
        self._reactor.stop()

    async def _stop(self) -> None:
        for port in self.ports.values():
            await port.stopListening()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.api_beat is not None and self.api_beat.running:
            self.api_beat.stop()
        if self.event_bus is not None:
            await self.event_bus.stop()
        if self.api_registry is not None:
            apis, name = self.api_registry
            with contextlib.suppress(Exception):
                await apis.leave(name)
        if self.internal_port is not None:
            await self.internal_port.stopListening()
        if self.fleet is not None:
            await self.fleet.close()
        if self.compute is not None:
            await self.compute.close()
        if self.registry is not None:
            await self.registry.close()
        if self.store is not None:
            await self.store.close()
        if self.embedded is not None:
            await self.embedded.stop()

    def stopService(self):
        super().stopService()
        return defer.ensureDeferred(self._stop())


def _setup_logging(config: sdcd_config.Config) -> None:
    if config.log_format == "json" and config.log_file is not None:
        try:
            stream = open(config.log_file, "a")  # noqa: SIM115 (lives as long as the process)
        except OSError as e:
            raise sdcd_config.ConfigError(
                f"cannot open log.file {config.log_file}: {e.strerror}"
            ) from None
        globalLogPublisher.addObserver(jsonFileLogObserver(stream, recordSeparator=""))


def build(options: Options, reactor) -> SdcdService:
    """Validate everything and bind the ports; ``ConfigError`` on any user error."""
    config = sdcd_config.load(options["config"])
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise sdcd_config.ConfigError(
            f"cannot create data_dir {config.data_dir}: {e.strerror}"
        ) from None
    server_tls = sdcd_tls.load_server_tls(config)
    SystemAndExtraCAs(config.registry_ca_files)  # unreadable CA files stop start-up here
    sdcd = SdcdService(reactor, config, server_tls)
    try:
        sdcd.check()
    except EmbeddedRedisError as e:
        raise sdcd_config.ConfigError(str(e)) from None
    sdcd.bind()
    _setup_logging(config)
    return sdcd


def makeService(options: Options, reactor=None) -> service.IService:
    """twistd's entry point: one clear line and exit status 1 for any user error."""
    if reactor is None:
        from twisted.internet import reactor
    try:
        return build(options, reactor)
    except sdcd_config.ConfigError as e:
        sys.stderr.write(f"sdcd: {e}\n")
        raise SystemExit(1) from None
