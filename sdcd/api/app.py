"""The Docker Remote API routes. A route parses, calls ``sdcd.core`` and renders.

Routes see requests that ``sdcd.api.root`` has already versioned and authenticated:
``request.sdcd_account`` and ``request.sdcd_version`` are set.
"""

from __future__ import annotations

import json
import time

from klein import Klein
from twisted.internet import defer
from twisted.python.failure import Failure
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from sdcd.api import images as render_images
from sdcd.api import system as render_system
from sdcd.api.build import BuildStream, build_options
from sdcd.api.errors import render_failure, write_json_error
from sdcd.api.filters import image_filter, parse_filters
from sdcd.api.params import arg, flag, json_body
from sdcd.api.streams import ChunkWriter, JSONStream, error_message
from sdcd.api.versions import MAX_VERSION, render
from sdcd.core import events as event_filters
from sdcd.core.build import BuildService
from sdcd.core.errors import CoreError, InvalidArgument, NotImplementedYet
from sdcd.core.images import ImageService
from sdcd.core.system import SystemService
from sdcd.images.archive import tar_chunks
from sdcd.images.registry import Credentials, RegistryError


def _unix(value: str | None) -> float | None:
    """A since/until value: unix seconds (the CLI turns dates and durations into that)."""
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise InvalidArgument(f"invalid timestamp: {value}") from None


def registry_credentials(request) -> Credentials | None:
    try:
        return Credentials.from_header(request.getHeader(b"x-registry-auth"))
    except RegistryError as e:
        raise InvalidArgument(e.message) from None


class DockerAPI:
    """The Klein application; dependencies come in through ``__init__``."""

    app = Klein()

    def __init__(
        self,
        system: SystemService,
        images: ImageService,
        containers=None,
        execs=None,
        build: BuildService | None = None,
    ) -> None:
        self._system = system
        self._images = images
        self._containers = containers
        self._execs = execs
        self._build = build

    @app.route("/events", methods=["GET"])
    async def events(self, request) -> bytes:
        """``docker events``: kept events from ``since``, then live ones until ``until``
        or until the client goes away."""
        if self._containers is None:
            raise NotImplementedYet("events are not available")
        login = request.sdcd_account.login
        since, until = _unix(arg(request, "since")), _unix(arg(request, "until"))
        filters = parse_filters(arg(request, "filters"))
        log = self._containers.events
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        request.write(b"")

        def send(event: dict) -> None:
            if event_filters.matches(event, filters) and not request.finished:
                request.write(json.dumps(event).encode() + b"\n")

        if since is not None or until is not None:
            for event in log.history(login, since, until):
                send(event)
        now = time.time()
        if until is not None and until <= now:
            return b""
        done: defer.Deferred = defer.Deferred()
        stop = log.listen(login, send)
        request.notifyFinish().addBoth(lambda _: done.called or done.callback(None))
        timer = None
        if until is not None:
            from twisted.internet import reactor

            timer = reactor.callLater(until - now, lambda: done.called or done.callback(None))
        try:
            await done
        finally:
            stop()
            if timer is not None and timer.active():
                timer.cancel()
        return b""

    @app.route("/commit", methods=["POST"])
    async def commit(self, request) -> bytes:
        if self._containers is None:
            raise NotImplementedYet("commit is not available")
        return await self._containers.commit(request)

    @app.route("/build", methods=["POST"])
    async def build(self, request) -> bytes:
        """``docker build``: the context (buffered to a file by twisted.web) is built
        while the steps stream; errors before the first message are HTTP errors."""
        if self._build is None:
            raise NotImplementedYet("build is not available")
        options = build_options(request)
        stream = BuildStream(request)
        request.content.seek(0)
        try:
            await self._build.build(request.sdcd_account, request.content, options, stream)
        except CoreError as e:
            if not stream.started:
                raise
            stream.error(e)
        return b""

    @app.route("/containers/", branch=True)
    def containers(self, request):
        return self._containers.resource()

    @app.route("/exec/", branch=True)
    def execs(self, request):
        if self._execs is None:
            raise NotImplementedYet("exec is not available")
        return self._execs.resource()

    def resource(self):
        return self.app.resource()

    @app.handle_errors(RouteNotFound, MethodNotAllowed)
    def _not_found(self, request, failure: Failure) -> bytes:
        return write_json_error(request, 404, "page not found")

    @app.handle_errors(Exception)
    def _error(self, request, failure: Failure) -> bytes:
        return render_failure(request, failure)

    @app.route("/_ping", methods=["GET", "HEAD"])
    def ping(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache, no-store, must-revalidate")
        request.setHeader(b"pragma", b"no-cache")
        # The classic builder: the CLI then does not look for BuildKit (buildx).
        request.setHeader(b"builder-version", b"1")
        return b"OK"

    @app.route("/version", methods=["GET"])
    async def version(self, request) -> bytes:
        view = await self._system.view(request.sdcd_account)
        body = render_system.version_body(
            self._system.version, view.kernel_version, view.architecture, request.sdcd_version
        )
        return json_body(request, body)

    @app.route("/info", methods=["GET"])
    async def info(self, request) -> bytes:
        view = await self._system.view(request.sdcd_account)
        return json_body(
            request, render_system.info_body(view, self._system.version, request.sdcd_version)
        )

    @app.route("/images/create", methods=["POST"])
    async def create_image(self, request) -> bytes:
        """``docker pull``: streams progress; errors before the first message are HTTP errors."""
        if arg(request, "fromSrc"):
            raise NotImplementedYet("importing images (fromSrc) is not supported")
        from_image = arg(request, "fromImage", "")
        if not from_image:
            raise InvalidArgument("fromImage is required")
        creds = registry_credentials(request)
        stream = JSONStream(request)
        try:
            await self._images.pull(
                request.sdcd_account,
                from_image,
                arg(request, "tag") or None,
                creds,
                stream.progress,
            )
        except CoreError as e:
            if not stream.started:
                raise
            stream.send(error_message(e.message))
        return b""

    @app.route("/images/json", methods=["GET"])
    async def list_images(self, request) -> bytes:
        filters = parse_filters(arg(request, "filters"))
        keep = await image_filter(filters, request.sdcd_account, self._images)
        images = await self._images.list(request.sdcd_account)
        show_all = flag(request, "all")
        digests = flag(request, "digests")
        entries = []
        for image in sorted(images, key=lambda i: i.added, reverse=True):
            config = self._images.config(image)
            if not keep(image, config):
                continue
            if (
                not show_all
                and not image.repo_tags
                and not image.repo_digests
                and "dangling" not in filters
            ):
                continue
            entries.append(render_images.list_entry(image, config, digests))
        return json_body(request, entries)

    @app.route("/images/search", methods=["GET"])
    async def search_images(self, request) -> bytes:
        term = arg(request, "term", "")
        if not term:
            raise InvalidArgument("term is required")
        try:
            limit = int(arg(request, "limit", "25"))
        except ValueError:
            raise InvalidArgument("limit must be a whole number") from None
        if not 1 <= limit <= 100:
            raise InvalidArgument("limit must be between 1 and 100")
        results = await self._images.search(
            request.sdcd_account, term, limit, registry_credentials(request)
        )
        return json_body(request, results)

    @app.route("/images/get", methods=["GET"])
    async def save_images(self, request) -> bytes:
        names = [n.decode("utf-8", "replace") for n in request.args.get(b"names", [])]
        return await self._save(request, names)

    @app.route("/images/<path:name>/get", methods=["GET"])
    async def save_image(self, request, name: str) -> bytes:
        return await self._save(request, [name])

    async def _save(self, request, names: list[str]) -> bytes:
        plan = await self._images.save_plan(request.sdcd_account, names)
        request.setHeader(b"content-type", b"application/x-tar")
        await ChunkWriter(request).write_all(tar_chunks(plan))
        return b""

    @app.route("/images/load", methods=["POST"])
    async def load_images(self, request) -> bytes:
        """``docker load``: the body (buffered to a file by twisted.web) is checked whole
        before anything is stored."""
        lines: list[str] = []
        request.content.seek(0)
        await self._images.load(request.sdcd_account, request.content, lines.append)
        request.setHeader(b"content-type", b"application/json")
        # ``quiet`` only silences progress bars in dockerd; the "Loaded image" lines stay.
        return b"".join(json.dumps({"stream": line}).encode() + b"\r\n" for line in lines)

    @app.route("/images/<path:name>/json", methods=["GET"])
    async def inspect_image(self, request, name: str) -> bytes:
        image = await self._images.resolve(request.sdcd_account, name)
        body = render_images.inspect_body(image, self._images.config(image), request.sdcd_version)
        return json_body(request, body)

    @app.route("/images/<path:name>/history", methods=["GET"])
    async def image_history(self, request, name: str) -> bytes:
        chain = await self._images.history(request.sdcd_account, name)
        return json_body(request, render_images.history_body(chain))

    @app.route("/images/<path:name>/push", methods=["POST"])
    async def push_image(self, request, name: str) -> bytes:
        """``docker push``: progress, then an ``aux`` message per tag, as dockerd sends."""
        creds = registry_credentials(request)
        stream = JSONStream(request)
        try:
            pushed = await self._images.push(
                request.sdcd_account, name, arg(request, "tag") or None, creds, stream.progress
            )
        except CoreError as e:
            if not stream.started:
                raise
            stream.send(error_message(e.message))
            return b""
        for aux in pushed:
            stream.send({"progressDetail": {}, "aux": aux})
        return b""

    @app.route("/images/<path:name>/tag", methods=["POST"])
    async def tag_image(self, request, name: str) -> bytes:
        repo = arg(request, "repo", "")
        if not repo:
            raise InvalidArgument("repository name (repo) is required")
        await self._images.tag(request.sdcd_account, name, repo, arg(request, "tag"))
        request.setResponseCode(201)
        return b""

    @app.route("/images/<path:name>", methods=["DELETE"])
    async def remove_image(self, request, name: str) -> bytes:
        report = await self._images.remove(request.sdcd_account, name, force=flag(request, "force"))
        if self._containers is not None and any("Deleted" in line for line in report):
            self._containers.prune_layers()
        return json_body(request, report)

    @app.route("/auth", methods=["POST"])
    async def login(self, request) -> bytes:
        """``docker login``: the registry itself judges the credentials."""
        try:
            body = json.loads(request.content.read(65536) or b"{}")
        except ValueError:
            raise InvalidArgument("malformed JSON body") from None
        if not isinstance(body, dict):
            raise InvalidArgument("malformed JSON body")
        await self._images.login(request.sdcd_account, Credentials.from_json(body))
        return json_body(request, {"Status": "Login Succeeded", "IdentityToken": ""})


def common_headers(request, version: str) -> None:
    """Headers on every response, as dockerd sets them (the CLI negotiates from them)."""
    request.setHeader(b"api-version", render(MAX_VERSION).encode())
    request.setHeader(b"ostype", b"linux")
    request.setHeader(b"docker-experimental", b"false")
    request.setHeader(b"server", render_system.SERVER_HEADER.format(version=version).encode())
