"""``docker build`` (``POST /build``), the classic builder: each Dockerfile step makes
an image of the account's; RUN runs in a build container on a compute node under the
account's package, COPY/ADD extract files into one, and the container's changes become
the step's layer. A step whose parent image and run config (with file checksums) match
an earlier step of the account's is taken from the cache instead.

The build context is extracted on the API host (``sdcd.images.buildcontext``); the node
only ever gets a checked tar through the same path as ``docker cp``.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import copy
import posixpath
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import attrs
from twisted.internet import threads
from twisted.logger import Logger
from zope.interface import implementer

from sdcd import timestamps
from sdcd.compute.interface import IStreamSink
from sdcd.core import buildconfig, dockerfile
from sdcd.core.buildconfig import BuildArgs, BuildError, StageState
from sdcd.core.containers import BUILD_LABEL
from sdcd.core.errors import InvalidArgument, NotFound, TooManyRequests
from sdcd.core.images import Progress, require_provisioning, short_id
from sdcd.images import reference as refs
from sdcd.images.buildcontext import BuildContext, ContextError, first_file_text, parse_chown
from sdcd.store.records import Account, ImageRecord, LayerRecord

#: A context larger than this is refused (it is extracted on the API host).
MAX_CONTEXT_BYTES = 4 * 1024**3
_WILDCARD = re.compile(r"[*?\[]")


class BuildOutput(Protocol):
    """Where a build's messages go (the route renders them as dockerd's JSON stream)."""

    def stream(self, text: str) -> None: ...
    def aux(self, value: dict[str, Any]) -> None: ...
    def progress(self, p: Progress) -> None: ...
    def register_producer(self, producer, streaming: bool) -> None: ...
    def unregister_producer(self) -> None: ...


@attrs.frozen
class BuildOptions:
    """``POST /build``'s query, parsed by the route."""

    dockerfile: str = "Dockerfile"
    tags: tuple[str, ...] = ()
    build_args: dict[str, str | None] = attrs.field(factory=dict)
    labels: dict[str, str] = attrs.field(factory=dict)
    nocache: bool = False
    pull: bool = False
    rm: bool = True
    forcerm: bool = False
    quiet: bool = False
    target: str = ""
    memory: int = 0
    auth: dict[str, Any] = attrs.field(factory=dict)


class BuildService:
    """Runs builds; one ``_Build`` per request."""

    def __init__(self, containers, images, cache, workdir: Path, max_per_account: int = 4) -> None:
        self.containers = containers
        self.images = images
        self.cache = cache
        self._workdir = workdir
        self._max_per_account = max_per_account
        self._running: collections.Counter[str] = collections.Counter()

    def _check(self, account: Account, options: BuildOptions) -> list[str]:
        """Before the context is read: provisioning and the tags (400 for a bad one)."""
        require_provisioning(account)
        names = []
        for tag in options.tags:
            try:
                names.append(str(refs.parse(tag)))
            except refs.ReferenceError as e:
                raise InvalidArgument(f"invalid reference format: {e}") from None
        return names

    async def build(
        self, account: Account, context: BinaryIO, options: BuildOptions, out: BuildOutput
    ) -> str:
        """Build; answer the image id. ``CoreError`` for a failure (the route streams it
        once output has started)."""
        names = self._check(account, options)
        if self._running[account.login] >= self._max_per_account:
            raise TooManyRequests(
                f"{account.login} already runs {self._max_per_account} builds: wait for one to end"
            )
        self._running[account.login] += 1
        try:
            return await self._build(account, context, options, out, names)
        finally:
            self._running[account.login] -= 1
            if not self._running[account.login]:
                del self._running[account.login]

    async def _build(self, account, context, options, out, names: list[str]) -> str:
        self._workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=self._workdir))
        build = _Build(self, account, options, out, tmp)
        try:
            image_id = await build.run(context)
            for name in names:
                ref = refs.parse(name)
                await self.images.tag(account, image_id, ref.name, ref.tag)
            if not options.quiet:
                for name in names:
                    out.stream(f"Successfully tagged {refs.parse(name).familiar}\n")
            return image_id
        finally:
            await build.clean_up()
            await threads.deferToThread(shutil.rmtree, tmp, True)


class _Build:
    """One build: its stages in order, the step counter, the containers to remove."""

    log = Logger()

    def __init__(self, service: BuildService, account, options, out, tmp: Path) -> None:
        self.s = service
        self.account = account
        self.options = options
        self.out = out
        self.tmp = tmp
        self.build_id = secrets.token_hex(8)
        self.args = BuildArgs(given=dict(options.build_args))
        self.stage_images: dict[str, StageState] = {}
        self.containers: list[str] = []
        self.step = 0
        self.total = 0
        self.escape = "\\"
        self.context: BuildContext | None = None
        self._fetches = 0

    # -- the build ------------------------------------------------------------------

    async def run(self, source: BinaryIO) -> str:
        self.context = await _in_thread(
            BuildContext.extract, source, self.tmp / "context", MAX_CONTEXT_BYTES
        )
        text = await _in_thread(self.context.dockerfile, self.options.dockerfile)
        meta, stages = _parse(text, self.options.dockerfile)
        self.escape = dockerfile.escape_of(text)
        stages = self._up_to_target(stages)
        if self.options.labels:
            stages[-1] = attrs.evolve(
                stages[-1], instructions=(*stages[-1].instructions, _label_step(self.options))
            )
        self.total = len(meta) + sum(1 + len(s.instructions) for s in stages)
        for inst in meta:
            self._announce(inst)
            for name, default in _meta_pairs(inst, self.args.meta, self.escape):
                self.args.meta[name] = self.args.value(name, default)
        state = None
        for stage in stages:
            state = await self._stage(stage)
            self.stage_images[str(stage.index)] = state
            if stage.name:
                self.stage_images[stage.name] = state
        assert state is not None
        for name in self.args.unused():
            self.say(f"[Warning] One or more build-args [{name}] were not consumed\n")
        return await self._finish(state)

    def _up_to_target(self, stages: list) -> list:
        if not self.options.target:
            return stages
        for i, stage in enumerate(stages):
            if stage.name == self.options.target.lower():
                return stages[: i + 1]
        raise InvalidArgument(f"failed to reach build target {self.options.target} in Dockerfile")

    async def _finish(self, state: StageState) -> str:
        image_id = state.image_id
        if state.scratch and not state.doc.get("history"):
            raise BuildError("No image was generated. Is your Dockerfile empty?")
        self.out.aux({"ID": image_id})
        if self.options.quiet:
            self.out.stream(image_id + "\n")
        else:
            self.out.stream(f"Successfully built {short_id(image_id)}\n")
        return image_id

    async def _stage(self, stage: dockerfile.Stage) -> StageState:
        self._announce(stage.from_inst)
        state = await self._from(stage)
        triggers = state.config.get("OnBuild") or []
        state.config["OnBuild"] = None
        if triggers:
            self.say(
                f"# Executing {len(triggers)} build trigger" + "s" * (len(triggers) > 1) + "\n"
            )
            try:
                instructions = dockerfile.onbuild_instructions(list(triggers))
            except dockerfile.DockerfileError as e:
                raise BuildError(e.message) from None
            for inst in instructions:
                await self._step(state, inst)
        for inst in stage.instructions:
            self._announce(inst)
            await self._step(state, inst)
        return state

    async def _from(self, stage: dockerfile.Stage) -> StageState:
        env = {k: v for k, v in self.args.meta.items() if v is not None}
        name = dockerfile.expand(stage.base, env, self.escape)
        if not name:
            raise BuildError("base name (" + stage.base + ") should not be blank")
        if name.lower() == "scratch":
            doc = buildconfig.scratch_doc()
            image_id = await self.s.images.add_image(self.account, doc, (), "", None)
            return StageState(image_id, (), doc, escape=self.escape, scratch=True)
        earlier = self.stage_images.get(name.lower())
        image_id = earlier.image_id if earlier is not None else None
        image = await (self.s.images.resolve(self.account, image_id) if image_id
                       else self._base_image(name))  # fmt: skip
        self.say(f" ---> {short_id(image.id)}\n")
        doc = dict(self.s.images.config(image))
        return StageState(image.id, image.layers, _copy(doc), escape=self.escape)

    async def _base_image(self, name: str) -> ImageRecord:
        """The account's image of that name; pulled when missing (or ``pull``)."""
        if not self.options.pull:
            try:
                return await self.s.images.resolve(self.account, name)
            except NotFound:
                pass
        try:
            ref = refs.parse(name)
        except refs.ReferenceError as e:
            raise BuildError(f"invalid reference format: {e}") from None
        creds = self.options.auth.get(ref.registry_host)
        if creds is None and ref.registry_host in ("docker.io", "registry-1.docker.io"):
            creds = self.options.auth.get("https://index.docker.io/v1/")
        progress = (lambda _p: None) if self.options.quiet else self.out.progress
        return await self.s.images.pull(self.account, str(ref), None, creds, progress)

    # -- steps ----------------------------------------------------------------------

    async def _step(self, state: StageState, inst: dockerfile.Instruction) -> None:
        if inst.command == "RUN":
            await self._run(state, inst)
        elif inst.command in ("COPY", "ADD"):
            await self._copy(state, inst)
        elif inst.command == "FROM":
            raise BuildError("FROM is not allowed here")
        else:
            await self._config_step(state, inst)

    async def _config_step(self, state: StageState, inst: dockerfile.Instruction) -> None:
        text = buildconfig.apply(state, inst, self.args)
        run_config = {**state.config, "Cmd": buildconfig.nop(" " + text)}
        if await self._cached(state, run_config):
            return
        await self._commit(state, run_config, "/bin/sh -c #(nop)  " + text, None, run_config)

    async def _run(self, state: StageState, inst: dockerfile.Instruction) -> None:
        cmd = dockerfile.shell_command(inst, state.shell())
        args = state.run_args()
        cache_cmd = [f"|{len(args)}", *args, *cmd] if args else cmd
        run_config = {**state.config, "Cmd": cache_cmd}
        if await self._cached(state, run_config):
            return
        cid = await self._container(state, cmd, args)
        self.say(f" ---> Running in {cid[:12]}\n")
        sink = _OutputSink(self)
        exited = await self.s.containers.run_attached(self.account, cid, sink)
        if exited.exit_code:
            raise BuildError(
                f"The command '{' '.join(cmd)}' returned a non-zero code: {exited.exit_code}",
                exited.exit_code,
            )
        layer = await self.s.containers.layer(self.account, cid)
        await self._remove(cid)
        await self._commit(state, run_config, " ".join(cache_cmd), layer, run_config)

    async def _copy(self, state: StageState, inst: dockerfile.Instruction) -> None:
        env = state.env()
        if inst.json is not None:
            words = [dockerfile.expand(w, env, self.escape) for w in inst.json]
        else:
            words = dockerfile.split_words(inst.rest, env, self.escape)
        if len(words) < 2:
            raise BuildError(f"{inst.command} requires at least two arguments")
        *patterns, dest = words
        if inst.command == "ADD":
            _refuse_urls(patterns)
        source = inst.flags.get("from")
        context = await self._source_context(source, patterns) if source else self.context
        paths = await _in_thread(context.sources, _relative(patterns), inst.command)
        checksum = await _in_thread(context.checksum, paths)
        dest_path = _destination(state, dest)
        chown = inst.flags.get("chown") or ""
        chmod = _chmod(inst.flags.get("chmod"))
        text = f"{inst.command} {'--chown=' + chown + ' ' if chown else ''}{checksum} in {dest} "
        run_config = {**state.config, "Cmd": buildconfig.nop(text)}
        if await self._cached(state, run_config):
            return
        cid = await self._container(state, buildconfig.nop(text), [])
        uid, gid = await self._owner(cid, chown)
        hint = await self._is_dir(cid, dest_path)
        spool = self.tmp / f"copy-{cid[:12]}.tar"
        with open(spool, "w+b") as tar:
            await _in_thread(
                context.write_copy_tar, paths, dest_path, tar, uid=uid, gid=gid,
                extract_archives=inst.command == "ADD", chmod=chmod, dest_is_dir_hint=hint,
            )  # fmt: skip
            tar.seek(0)
            await self.s.containers.archive_put(self.account, cid, "/", tar.read, False)
        spool.unlink()
        layer = await self.s.containers.layer(self.account, cid)
        await self._remove(cid)
        await self._commit(state, run_config, "/bin/sh -c #(nop) " + text, layer, run_config)

    async def _source_context(self, source: str, patterns: list[str]) -> BuildContext:
        """``COPY --from``: the named paths of an earlier stage's (or an image's) file
        system, fetched through a container as ``docker cp`` does, into a directory."""
        state = self.stage_images.get(source.lower())
        if state is not None:
            image = await self.s.images.resolve(self.account, state.image_id)
        else:
            image = await self._base_image(source)
        self._fetches += 1
        root = self.tmp / f"from-{self._fetches}"
        root.mkdir()
        fetch_state = StageState(image.id, image.layers, dict(self.s.images.config(image)))
        cid = await self._container(fetch_state, buildconfig.nop("fetch"), [], hidden=True)
        try:
            for i, pattern in enumerate(patterns):
                await self._fetch(cid, _fetch_path(pattern), root, i)
        finally:
            await self._remove(cid, quiet=True)
        return BuildContext.from_dir(root)

    async def _fetch(self, cid: str, path: str, root: Path, i: int) -> None:
        spool = root.parent / f"{root.name}-{i}.tar"
        with open(spool, "w+b") as f:
            try:
                await self.s.containers.archive_get(self.account, cid, path, _FileConsumer(f))
            except NotFound:
                return  # the pattern then matches nothing: the copy says so
            f.seek(0)
            context = BuildContext.from_dir(root)
            await _in_thread(context.add_tar, f, posixpath.dirname(path), MAX_CONTEXT_BYTES)
        spool.unlink()

    # -- containers and images -------------------------------------------------------

    async def _container(
        self, state: StageState, cmd: list[str], args: list[str], hidden: bool = False
    ) -> str:
        """A build container from the stage's image, under the account's package."""
        body = {
            "Image": state.image_id,
            "Cmd": cmd,
            "Entrypoint": [""],
            "Env": [*(state.config.get("Env") or []), *args],
            "User": state.config.get("User") or "",
            "WorkingDir": state.config.get("WorkingDir") or "",
            "Labels": {BUILD_LABEL: self.s.containers.build_label(self.build_id)},
            "AttachStdout": True,
            "AttachStderr": True,
            "HostConfig": {"Memory": self.options.memory, "LogConfig": {"Type": "none"}},
        }
        cid, _ = await self.s.containers.create(self.account, body, (1, 41), None)
        self.containers.append(cid)
        return cid

    async def _remove(self, cid: str, quiet: bool = False) -> None:
        if cid in self.containers:
            self.containers.remove(cid)
        with contextlib.suppress(NotFound):
            await self.s.containers.remove(self.account, cid, True)
        if not quiet:
            self.say(f"Removing intermediate container {cid[:12]}\n")

    async def clean_up(self) -> None:
        """Build containers a failed or abandoned build left (``rm``/``forcerm``)."""
        for cid in list(self.containers):
            if self.options.rm or self.options.forcerm:
                try:
                    await self._remove(cid, quiet=True)
                except Exception:
                    self.log.failure("removing build container {cid}", cid=cid)

    async def _cached(self, state: StageState, run_config: dict) -> bool:
        if self.options.nocache:
            return False
        key = buildconfig.cache_key(state.image_id, run_config)
        image_id = await self.s.cache.get_build_cache(self.account.login, key)
        if image_id is None:
            return False
        try:
            image = await self.s.images.resolve(self.account, image_id)
        except NotFound:
            return False
        self.say(" ---> Using cache\n")
        self._advance(state, image)
        return True

    async def _commit(self, state, run_config, created_by, layer, cache_config) -> str:
        """The step's image: the stage's config document, its history, and the layer
        (None for a config-only step); filed in the cache under the step's key."""
        diff_id = layer["diff_id"] if layer else None
        doc = buildconfig.new_doc(state, run_config, timestamps.now(), created_by, diff_id)
        layers = state.layers
        if layer:
            layers = (*layers, LayerRecord(layer["digest"], layer["diff_id"], layer["size"],
                                           layer["media_type"]))  # fmt: skip
        image_id = await self.s.images.add_image(self.account, doc, layers, state.image_id, None)
        if cache_config is not None:
            key = buildconfig.cache_key(state.image_id, cache_config)
            await self.s.cache.put_build_cache(self.account.login, key, image_id)
        image = await self.s.images.resolve(self.account, image_id)
        self._advance(state, image)
        return image_id

    def _advance(self, state: StageState, image: ImageRecord) -> None:
        state.image_id = image.id
        state.layers = image.layers
        state.doc = _copy(dict(self.s.images.config(image)))
        self.say(f" ---> {short_id(image.id)}\n")

    async def _owner(self, cid: str, chown: str) -> tuple[int, int]:
        if not chown:
            return 0, 0
        if all(part.isdigit() for part in chown.split(":")):
            return _in_context(parse_chown, chown, None, None)
        passwd = await self._read_file(cid, "/etc/passwd")
        group = await self._read_file(cid, "/etc/group")
        return _in_context(parse_chown, chown, passwd, group)

    async def _read_file(self, cid: str, path: str) -> str | None:
        spool = self.tmp / f"read-{cid[:12]}.tar"
        with open(spool, "w+b") as f:
            try:
                await self.s.containers.archive_get(self.account, cid, path, _FileConsumer(f))
            except NotFound:
                return None
            f.seek(0)
            text = await _in_thread(first_file_text, f)
        spool.unlink()
        return text

    async def _is_dir(self, cid: str, path: str) -> bool:
        try:
            stat = await self.s.containers.archive_stat(self.account, cid, path)
        except NotFound:
            return False
        return bool(stat.get("mode", 0) & (1 << 31))

    # -- output ---------------------------------------------------------------------

    def _announce(self, inst: dockerfile.Instruction) -> None:
        self.step += 1
        self.say(f"Step {self.step}/{self.total} : {inst.original}\n")

    def say(self, text: str) -> None:
        if not self.options.quiet:
            self.out.stream(text)


@implementer(IStreamSink)
class _OutputSink:
    """A RUN's stdout and stderr into the build's stream, decoded as it goes (a
    character split between two packets is kept for the next)."""

    def __init__(self, build: _Build) -> None:
        self._build = build
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, stream: str, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text:
            self._build.say(text)

    def end(self) -> None:
        rest = self._decoder.decode(b"", final=True)
        if rest:
            self._build.say(rest)

    def registerProducer(self, producer, streaming: bool) -> None:
        self._build.out.register_producer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._build.out.unregister_producer()


class _FileConsumer:
    """``docker cp``'s tar (a few files: ``COPY --from``, /etc/passwd) into a spool."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def write(self, data: bytes) -> None:
        self._f.write(data)

    def registerProducer(self, producer, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


# -- pure helpers ----------------------------------------------------------------------


def _parse(text: str, name: str) -> tuple[list, list]:
    try:
        return dockerfile.stages(dockerfile.parse(text, name))
    except dockerfile.DockerfileError as e:
        raise InvalidArgument(e.message) from None


def _meta_pairs(inst, meta: dict, escape: str) -> list[tuple[str, str | None]]:
    env = {k: v for k, v in meta.items() if v is not None}
    try:
        return dockerfile.key_values(inst, env, escape)
    except dockerfile.DockerfileError as e:
        raise InvalidArgument(e.message) from None


def _label_step(options: BuildOptions) -> dockerfile.Instruction:
    """``--label``s become one more LABEL step of the last stage, as in dockerd."""
    rest = " ".join(f"{_quoted(k)}={_quoted(v)}" for k, v in sorted(options.labels.items()))
    return dockerfile.Instruction("LABEL", rest, {}, None, "LABEL " + rest, 0)


def _quoted(text: str) -> str:
    """Single quotes: nothing in a --label is expanded or unescaped (as dockerd)."""
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _refuse_urls(patterns: list[str]) -> None:
    for pattern in patterns:
        if re.match(r"^[a-z][a-z0-9+.-]*://", pattern, re.IGNORECASE):
            raise BuildError(
                f"ADD {pattern}: fetching a URL is not supported here: compute nodes have no "
                "internet access; download it into the build context and COPY it"
            )


def _relative(patterns: list[str]) -> list[str]:
    return [p.lstrip("/") or "." for p in patterns]


def _destination(state: StageState, dest: str) -> str:
    """An absolute destination (relative ones are under WORKDIR), keeping the trailing
    slash that says "a directory"."""
    workdir = state.config.get("WorkingDir") or "/"
    path = posixpath.normpath(posixpath.join(workdir, dest))
    if (dest.endswith("/") or dest.endswith("/.") or dest == ".") and path != "/":
        path += "/"
    return path


def _chmod(value: str | None) -> int | None:
    if value is None:
        return None
    if not re.fullmatch(r"[0-7]{3,4}", value):
        raise BuildError(f"invalid chmod parameter: {value}")
    return int(value, 8)


def _fetch_path(pattern: str) -> str:
    """What to fetch for a ``COPY --from`` source: the pattern, or the directory above
    its first wildcard."""
    path = "/" + pattern.lstrip("/")
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _WILDCARD.search(part):
            return "/".join(parts[:i]) or "/"
    return posixpath.normpath(path)


def _copy(doc: dict) -> dict:
    return copy.deepcopy(doc)


def _in_context(function: Callable, *args):
    try:
        return function(*args)
    except ContextError as e:
        raise BuildError(e.message) from None


async def _in_thread(function: Callable, *args, **kwargs):
    try:
        return await threads.deferToThread(function, *args, **kwargs)
    except ContextError as e:
        raise BuildError(e.message) from None
