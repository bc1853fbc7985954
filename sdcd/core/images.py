"""Images: what an account may pull, see, name and delete.

Blobs are stored once for the datacenter (``IBlobStore``); each account has its own
records (``IImageRecords``) over them. A pull reports progress as ``Progress`` events that
the API renders in dockerd's JSON stream; layers download three at a time, and a layer
that another pull is already fetching is waited for, not fetched twice.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer, threads
from twisted.python.failure import Failure

from sdcd import timestamps
from sdcd.core.errors import (
    Conflict,
    CoreError,
    Forbidden,
    InvalidArgument,
    NotFound,
    Unauthorized,
)
from sdcd.images import archive
from sdcd.images import manifest as mf
from sdcd.images import reference as refs
from sdcd.images.blobstore import BlobError
from sdcd.images.registry import (
    Credentials,
    RegistryError,
    RegistryNotFound,
    RegistryUnauthorized,
)
from sdcd.store.records import Account, ImageRecord, LayerRecord

PARALLEL_DOWNLOADS = 3
PROGRESS_EVERY = 512 * 1024


@attrs.frozen
class Progress:
    """One line of a long operation's progress (rendered by the API as dockerd does)."""

    status: str
    id: str | None = None
    current: int | None = None
    total: int | None = None


ProgressSink = Callable[[Progress], None]


class PullError(CoreError):
    """A pull failed after it started reporting progress."""


def require_provisioning(account: Account) -> None:
    """SDC's rule: an account not approved for provisioning may look, not pull or run."""
    if not account.approved:
        raise Forbidden(f"{account.login} does not have permission to pull or provision")


def short_id(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def _registry_problem(e: RegistryError, ref: refs.Reference) -> CoreError:
    """dockerd's wording for the failures users meet most."""
    if isinstance(e, RegistryNotFound | RegistryUnauthorized):
        return NotFound(
            f"pull access denied for {ref.familiar_name}, repository does not exist or may "
            f"require 'docker login': {e.message}"
        )
    return PullError(e.message)


#: ``docker history`` follows at most this many parents (a Dockerfile has fewer steps).
MAX_HISTORY_PARENTS = 1000


class ImageService:
    """Pull, list, inspect, tag and delete the images of one account at a time."""

    def __init__(self, records, blobs, registry) -> None:
        self._records = records
        self._blobs = blobs
        self._registry = registry
        self._downloads: dict[str, _Shared] = {}
        self._slots = defer.DeferredSemaphore(PARALLEL_DOWNLOADS)

    # -- pull -------------------------------------------------------------------------

    async def pull(
        self,
        account: Account,
        from_image: str,
        tag: str | None,
        creds: Credentials | None,
        progress: ProgressSink,
    ) -> ImageRecord:
        """Pull ``from_image[:tag]`` for the account. Errors before the first progress
        event are ordinary errors; after it, ``PullError`` (the API streams it)."""
        require_provisioning(account)
        try:
            ref = refs.parse_repository_and_tag(from_image, tag)
        except refs.ReferenceError as e:
            raise InvalidArgument(str(e)) from None
        try:
            manifest, manifest_digest = await self._resolve_manifest(ref, creds)
        except mf.ManifestError as e:
            raise InvalidArgument(str(e)) from None
        except RegistryError as e:
            raise _registry_problem(e, ref) from None
        progress(Progress(f"Pulling from {ref.path}", id=ref.tag or ref.digest))
        try:
            return await self._pull_image(account, ref, manifest, manifest_digest, creds, progress)
        except (RegistryError, BlobError, mf.ManifestError) as e:
            raise PullError(getattr(e, "message", None) or str(e)) from None

    async def _resolve_manifest(self, ref, creds):
        """The image manifest for linux/amd64 and the digest to record for it."""
        host, repo = ref.registry_host, ref.path
        wanted = ref.digest or ref.tag
        body, content_type, digest = await self._registry.get_manifest(
            host, repo, wanted, mf.ACCEPT, creds
        )
        if ref.digest:
            mf.verify_digest(body, ref.digest)
        top_digest = ref.digest or digest or mf.digest_of(body)
        parsed = mf.parse_manifest(body, content_type)
        if isinstance(parsed, mf.ManifestList):
            chosen = mf.choose_platform(parsed)
            body, content_type, _ = await self._registry.get_manifest(
                host, repo, chosen.digest, mf.ACCEPT, creds
            )
            mf.verify_digest(body, chosen.digest)
            parsed = mf.parse_manifest(body, content_type)
            if isinstance(parsed, mf.ManifestList):
                raise mf.ManifestError("a manifest list may not point at another list")
        return parsed, top_digest

    async def _fetch_small(self, ref, digest: str, size: int, creds) -> bytes:
        chunks: list[bytes] = []
        received = [0]

        def sink(data: bytes) -> None:
            received[0] += len(data)
            if received[0] > max(size, 0) + 1024 * 1024 or received[0] > 16 * 1024 * 1024:
                raise BlobError(f"blob {digest} is larger than announced")
            chunks.append(data)

        await self._registry.fetch_blob(ref.registry_host, ref.path, digest, sink, creds)
        data = b"".join(chunks)
        mf.verify_digest(data, digest)
        return data

    async def _pull_image(self, account, ref, manifest, manifest_digest, creds, progress):
        config_raw = await self._config(ref, manifest.config, creds)
        config = mf.parse_config(config_raw)
        mf.check_layers_match(manifest, config)
        await self._layers(ref, manifest.layers, creds, progress)
        image_id = manifest.config.digest
        if not self._blobs.has(image_id):  # stored last: a failed pull leaves no config
            await self._blobs.put(image_id, config_raw)
        layers = tuple(
            LayerRecord(d.digest, diff_id, d.size, d.media_type)
            for d, diff_id in zip(manifest.layers, config.rootfs_diff_ids, strict=True)
        )
        record = ImageRecord(
            id=image_id,
            layers=layers,
            created=config.created or "",
            size=sum(layer.size for layer in layers),
            added=timestamps.now(),
        )
        tag_name = str(ref) if ref.tag else None
        had_it = tag_name is not None and (
            await self._records.resolve_name(account.login, tag_name) == image_id
        )
        await self._records.put_image(
            account.login, record, [tag_name] if tag_name else [], [f"{ref.name}@{manifest_digest}"]
        )
        progress(Progress(f"Digest: {manifest_digest}"))
        shown = ref.familiar
        if had_it:
            progress(Progress(f"Status: Image is up to date for {shown}"))
        else:
            progress(Progress(f"Status: Downloaded newer image for {shown}"))
        return record

    async def _config(self, ref, descriptor, creds) -> bytes:
        if self._blobs.has(descriptor.digest):
            return self._blobs.read(descriptor.digest)
        return await self._fetch_small(ref, descriptor.digest, descriptor.size, creds)

    async def _layers(self, ref, layers, creds, progress) -> None:
        missing = []
        for layer in layers:
            if self._blobs.has(layer.digest):
                progress(Progress("Already exists", id=short_id(layer.digest)))
            elif layer.digest not in {d.digest for d in missing}:
                progress(Progress("Pulling fs layer", id=short_id(layer.digest)))
                missing.append(layer)
        results = await defer.DeferredList(
            [defer.ensureDeferred(self._layer(ref, layer, creds, progress)) for layer in missing],
            consumeErrors=True,
        )
        for ok, result in results:
            if not ok:
                result.raiseException()

    async def _layer(self, ref, layer, creds, progress) -> None:
        """One layer: wait for another pull's download of it, or download it."""
        lid = short_id(layer.digest)
        shared = self._downloads.get(layer.digest)
        if shared is not None:
            progress(Progress("Waiting", id=lid))
            await shared.wait()
        else:
            d = defer.ensureDeferred(self._download(ref, layer, creds, progress))
            shared = self._downloads[layer.digest] = _Shared(d)
            d.addBoth(lambda _: self._downloads.pop(layer.digest, None))
            await shared.wait()
        progress(Progress("Download complete", id=lid))
        progress(Progress("Pull complete", id=lid))

    async def _download(self, ref, layer, creds, progress) -> None:
        await self._slots.acquire()
        try:
            await self._download_now(ref, layer, creds, progress)
        finally:
            self._slots.release()

    async def _download_now(self, ref, layer, creds, progress) -> None:
        lid = short_id(layer.digest)
        writer = self._blobs.writer(layer.digest, layer.size if layer.size >= 0 else None)
        reported = [0]

        def sink(data: bytes) -> None:
            writer.write(data)
            if writer.received - reported[0] >= PROGRESS_EVERY:
                reported[0] = writer.received
                progress(Progress("Downloading", id=lid, current=writer.received, total=layer.size))

        try:
            await self._registry.fetch_blob(
                ref.registry_host, ref.path, layer.digest, sink, creds, attach=writer.attach
            )
            progress(Progress("Verifying Checksum", id=lid))
            await writer.commit()
        except BaseException:
            await writer.abort()
            raise

    # -- push -------------------------------------------------------------------------

    async def push(
        self, account: Account, name: str, tag: str | None, creds, progress: ProgressSink
    ) -> list[dict]:
        """``docker push``: every tag of the repository (or the one given). Blobs the
        registry has are skipped (HEAD), the rest uploaded; then the manifest."""
        require_provisioning(account)
        try:
            repo = refs.parse(name, default_tag=None)
        except refs.ReferenceError as e:
            raise InvalidArgument(str(e)) from None
        if repo.digest:
            raise InvalidArgument("cannot push a digest reference")
        tags = [tag] if tag else ([repo.tag] if repo.tag else await self._tags_of(account, repo))
        if not tags:
            raise NotFound(f"An image does not exist locally with the tag: {repo.familiar_name}")
        images = []
        for t in tags:
            image = await self._find(account, str(repo.with_tag(t)))
            if image is None:
                raise NotFound(f"tag does not exist: {repo.familiar_name}:{t}")
            images.append((t, image))
        progress(
            Progress(f"The push refers to repository [{repo.name.removeprefix('docker.io/')}]")
        )
        pushed = []
        for t, image in images:
            try:
                pushed.append(await self._push_one(account, repo, t, image, creds, progress))
            except (RegistryError, BlobError) as e:
                raise PullError(getattr(e, "message", None) or str(e)) from None
        return pushed

    async def _tags_of(self, account: Account, repo) -> list[str]:
        prefix = repo.name + ":"
        return sorted(
            tag[len(prefix) :]
            for image in await self._records.list_images(account.login)
            for tag in image.repo_tags
            if tag.startswith(prefix)
        )

    async def _push_one(self, account, repo, tag, image, creds, progress) -> dict:
        host, path = repo.registry_host, repo.path
        source = _mount_source(image, repo)
        for layer in image.layers:
            await self._push_blob(host, path, layer.digest, creds, progress, True, source)
        await self._push_blob(host, path, image.id, creds, progress, False, source)
        body = self._manifest_for(image)
        digest = await self._registry.put_manifest(
            host, path, tag, body, mf.DOCKER_MANIFEST, creds
        ) or mf.digest_of(body)
        await self._records.put_image(account.login, image, [], [f"{repo.name}@{digest}"])
        progress(Progress(f"{tag}: digest: {digest} size: {len(body)}"))
        return {"Tag": tag, "Digest": digest, "Size": len(body)}

    async def _push_blob(self, host, path, digest, creds, progress, show, source) -> None:
        lid = short_id(digest)
        if show:
            progress(Progress("Preparing", id=lid))
        if await self._registry.blob_exists(host, path, digest, creds):
            if show:
                progress(Progress("Layer already exists", id=lid))
            return
        location = await self._registry.start_upload(host, path, digest, creds, source)
        if location is None:
            if show:
                progress(Progress(f"Mounted from {source}", id=lid))
            return
        size = self._blobs.size(digest)
        if show:
            progress(Progress("Pushing", id=lid, current=0, total=size))
        blob_path = self._blobs.path(digest)

        def body():
            from twisted.web.client import FileBodyProducer

            return FileBodyProducer(open(blob_path, "rb"))

        await self._registry.finish_upload(host, path, location, digest, body, creds)
        if show:
            progress(Progress("Pushed", id=lid))

    def _manifest_for(self, image: ImageRecord) -> bytes:
        """A Docker v2 schema 2 manifest for a record (its config and layers as stored)."""
        manifest = {
            "schemaVersion": 2,
            "mediaType": mf.DOCKER_MANIFEST,
            "config": {
                "mediaType": mf.DOCKER_CONFIG,
                "size": self._blobs.size(image.id),
                "digest": image.id,
            },
            "layers": [
                {
                    "mediaType": _docker_layer_type(layer.media_type),
                    "size": layer.size,
                    "digest": layer.digest,
                }
                for layer in image.layers
            ],
        }
        return json.dumps(manifest, indent=3).encode()

    # -- save and load --------------------------------------------------------------

    async def save_plan(self, account: Account, names: list[str]) -> list:
        """The members of a ``docker save`` archive of the named images."""
        if not names:
            raise InvalidArgument("no images named")
        chosen: dict[str, archive.SavedImage] = {}
        for name in names:
            image = await self.resolve(account, name)
            tags = (
                tuple(_familiar(t) for t in image.repo_tags) if self._is_name(name, image) else ()
            )
            if self._is_name(name, image) and "@" not in name:
                tags = (refs.parse(name).familiar,)
            previous = chosen.get(image.id)
            chosen[image.id] = archive.SavedImage(
                config_digest=image.id,
                layer_digests=tuple(layer.digest for layer in image.layers),
                layer_types=tuple(layer.media_type for layer in image.layers),
                repo_tags=tuple(dict.fromkeys((*(previous.repo_tags if previous else ()), *tags))),
            )
        return archive.archive_plan(list(chosen.values()), self._blobs.path)

    async def load(self, account: Account, source, progress: Callable[[str], None]) -> None:
        """``docker load``: check the whole archive in a thread, then store its blobs and
        record its images for the account; a bad archive stores nothing."""
        require_provisioning(account)
        try:
            images, staged = await threads.deferToThread(
                archive.read_archive, source, self._blobs.tmp_dir
            )
        except archive.ArchiveError as e:
            raise InvalidArgument(str(e)) from None
        try:
            tags = [[str(refs.parse(t)) for t in image.repo_tags] for image in images]
        except refs.ReferenceError as e:
            archive.discard(staged)
            raise InvalidArgument(f"invalid tag in archive: {e}") from None
        await threads.deferToThread(archive.publish, staged, self._blobs.path)
        for image, image_tags in zip(images, tags, strict=True):
            if not self._blobs.has(image.config_digest):
                await self._blobs.put(image.config_digest, image.config_raw)
            config = mf.parse_config(image.config_raw)
            record = ImageRecord(
                id=image.config_digest,
                layers=tuple(
                    LayerRecord(la.digest, la.diff_id, la.size, la.media_type)
                    for la in image.layers
                ),
                created=config.created or "",
                size=sum(la.size for la in image.layers),
                added=timestamps.now(),
            )
            await self._records.put_image(account.login, record, image_tags, [])
            for tag in image.repo_tags:
                progress(f"Loaded image: {refs.parse(tag).familiar}\n")
            if not image.repo_tags:
                progress(f"Loaded image ID: {image.config_digest}\n")

    def check_name(self, repo: str, tag: str | None) -> str | None:
        """``repo[:tag]`` as stored (400 for a bad one); None without a repo."""
        if not repo:
            if tag:
                raise InvalidArgument("tag requires a repository name")
            return None
        try:
            return str(refs.parse(f"{repo}:{tag or 'latest'}"))
        except refs.ReferenceError as e:
            raise InvalidArgument(f"invalid reference format: {e}") from None

    async def add_image(
        self, account: Account, config: dict, layers: tuple[LayerRecord, ...], parent: str,
        name: str | None,
    ) -> str:  # fmt: skip
        """Record a new image of the account (``docker commit``; its layer blobs are in
        the store already): the config blob, then the record and its tag."""
        raw = json.dumps(config, separators=(",", ":")).encode()
        image_id = "sha256:" + hashlib.sha256(raw).hexdigest()
        if not self._blobs.has(image_id):
            await self._blobs.put(image_id, raw)
        record = ImageRecord(
            id=image_id,
            layers=layers,
            created=config.get("created") or timestamps.now(),
            size=sum(la.size for la in layers),
            added=timestamps.now(),
            parent=parent,
        )
        await self._records.put_image(account.login, record, [name] if name else [], [])
        return image_id

    async def login(self, account: Account, creds: Credentials) -> None:
        """``docker login``: ask the registry named by ``serveraddress`` (Docker Hub when
        empty) whether it accepts the credentials."""
        if not creds.username and not creds.identity_token:
            raise InvalidArgument("username or identity token required")
        host = _registry_host(creds.server_address)
        try:
            await self._registry.check_login(host, creds)
        except RegistryUnauthorized as e:
            raise Unauthorized(f"login attempt to {host} failed: {e.message}") from None
        except RegistryError as e:
            raise PullError(f"login to {host} failed: {e.message}") from None

    async def search(self, account: Account, term: str, limit: int, creds) -> list[dict]:
        """Repositories of the registry named in ``term`` whose name contains the rest,
        from the registry's v2 catalog (Docker Hub's search API is not reachable from a
        datacenter without internet; it fails with the registry's error)."""
        host, _, query = term.partition("/") if _names_registry(term) else ("", "", term)
        host = _registry_host(host)
        try:
            repositories = await self._registry.catalog(host, creds)
        except RegistryError as e:
            raise PullError(f"search on {host} failed: {e.message}") from None
        prefix = "" if host == "registry-1.docker.io" else f"{host}/"
        found = [r for r in repositories if query.lower() in r.lower()]
        return [
            {
                "name": prefix + r,
                "description": "",
                "star_count": 0,
                "is_official": False,
                "is_automated": False,
            }
            for r in sorted(found)[:limit]
        ]

    # -- lookups ----------------------------------------------------------------------

    async def resolve(self, account: Account, name: str) -> ImageRecord:
        """An image of the account by name[:tag], name@digest, full or short id."""
        image = await self._find(account, name)
        if image is None:
            raise NotFound(f"No such image: {name}")
        return image

    async def _find(self, account: Account, name: str) -> ImageRecord | None:
        login = account.login
        hexid = name.removeprefix("sha256:")
        if re.fullmatch(r"[0-9a-f]{64}", hexid):
            return await self._records.get_image(login, "sha256:" + hexid)
        try:
            ref = refs.parse(name)
        except refs.ReferenceError:
            ref = None
        if ref is not None:
            key = f"{ref.name}@{ref.digest}" if ref.digest else str(ref)
            image_id = await self._records.resolve_name(login, key)
            if image_id:
                return await self._records.get_image(login, image_id)
        if re.fullmatch(r"[0-9a-f]{1,63}", hexid):
            found = [
                i for i in await self._records.list_images(login) if i.id[7:].startswith(hexid)
            ]
            if len(found) > 1:
                raise InvalidArgument(f"ambiguous image id prefix: {name}")
            return found[0] if found else None
        return None

    async def list(self, account: Account) -> list[ImageRecord]:
        return await self._records.list_images(account.login)

    def config(self, image: ImageRecord) -> dict[str, Any]:
        """The image's config document (a small blob)."""
        return json.loads(self._blobs.read(image.id))

    async def history(self, account: Account, name: str) -> list[tuple[ImageRecord, dict]]:
        """The image and its parents the account still has (``docker history`` names
        them; a build's or commit's), newest first, each with its config document."""
        image = await self.resolve(account, name)
        chain = [(image, self.config(image))]
        seen = {image.id}
        while chain[-1][0].parent and len(chain) < MAX_HISTORY_PARENTS:
            parent = await self._records.get_image(account.login, chain[-1][0].parent)
            if parent is None or parent.id in seen:
                break
            seen.add(parent.id)
            chain.append((parent, self.config(parent)))
        return chain

    # -- names ------------------------------------------------------------------------

    async def tag(self, account: Account, name: str, repo: str, tag: str | None) -> str:
        image = await self.resolve(account, name)
        try:
            target = refs.parse_repository_and_tag(repo, tag or None)
        except refs.ReferenceError as e:
            raise InvalidArgument(str(e)) from None
        if target.digest:
            raise InvalidArgument("refusing to create a tag with a digest reference")
        await self._records.tag_image(account.login, image.id, str(target))
        return str(target)

    async def remove(self, account: Account, name: str, force: bool = False) -> list[dict]:
        """``docker rmi``: untag a name; delete the image once nothing names it (or on
        an id, if it has at most one repository or ``force``). Returns dockerd's list of
        ``{"Untagged": ...}``/``{"Deleted": ...}``."""
        image = await self.resolve(account, name)
        by_name = self._is_name(name, image)
        has_children = any(i.parent == image.id for i in await self.list(account))
        if has_children and not by_name:
            raise Conflict(
                f"conflict: unable to delete {short_id(image.id)} (cannot be forced) - image "
                "has dependent child images"
            )
        if not has_children and (
            not by_name or len(image.repo_tags) + len(image.repo_digests) <= 1
        ):
            await self._check_unused(account, image, force)
        report: list[dict] = []
        if by_name:
            key = self._name_key(name)
            await self._records.untag(account.login, key)
            report.append({"Untagged": refs.parse(name).familiar if "@" not in key else key})
            image = await self._records.get_image(account.login, image.id)
            if image is None or image.repo_tags:
                return report
        else:
            repos = {t.rsplit(":", 1)[0] for t in image.repo_tags}
            if len(repos) > 1 and not force:
                raise Conflict(
                    f"conflict: unable to delete {short_id(image.id)} (must be forced) - image "
                    "is referenced in multiple repositories"
                )
            for name_ in (*image.repo_tags, *image.repo_digests):
                await self._records.untag(account.login, name_)
                report.append({"Untagged": _familiar(name_)})
        if has_children:
            return report  # untagged; its child images still need it
        await self._delete(account, image, report)
        await self._prune_parents(account, image.parent, report)
        return report

    async def _delete(self, account: Account, image: ImageRecord, report: list[dict]) -> None:
        orphaned = await self._records.delete_image(account.login, image.id)
        report.append({"Deleted": image.id})
        for digest in orphaned:
            await self._blobs.delete(digest)

    async def _prune_parents(self, account: Account, parent: str, report: list[dict]) -> None:
        """dockerd's rmi also deletes the untagged parents nothing else needs: the
        intermediate images of a ``docker build``."""
        while parent:
            image = await self._records.get_image(account.login, parent)
            if image is None or image.repo_tags or image.repo_digests:
                return
            images = await self.list(account)
            if any(i.parent == image.id for i in images):
                return
            containers = await self._records.list_containers(account.login)
            if any(record.image_id == image.id for record, _state in containers):
                return
            await self._delete(account, image, report)
            parent = image.parent

    async def _check_unused(self, account: Account, image: ImageRecord, force: bool) -> None:
        """dockerd's rule: an image a running container uses cannot go; one a stopped
        container uses goes only when forced."""
        for record, state in await self._records.list_containers(account.login):
            if record.image_id != image.id:
                continue
            running = state.status in ("running", "paused", "restarting")
            if running or not force:
                how = "cannot be forced" if running else "must be forced"
                kind = "running" if running else "stopped"
                raise Conflict(
                    f"conflict: unable to delete {short_id(image.id)} ({how}) - image is being "
                    f"used by {kind} container {record.id[:12]}"
                )

    @staticmethod
    def _is_name(name: str, image: ImageRecord) -> bool:
        hexid = name.removeprefix("sha256:")
        return not (re.fullmatch(r"[0-9a-f]{1,64}", hexid) and image.id[7:].startswith(hexid))

    @staticmethod
    def _name_key(name: str) -> str:
        ref = refs.parse(name)
        return f"{ref.name}@{ref.digest}" if ref.digest else str(ref)


def _mount_source(image: ImageRecord, target) -> str | None:
    """Another repository of the same registry that the image came from: the registry
    can mount its blobs instead of receiving them again."""
    for name in image.repo_digests:
        try:
            ref = refs.parse(name, default_tag=None)
        except refs.ReferenceError:
            continue
        if ref.domain == target.domain and ref.path != target.path:
            return ref.path
    return None


def _docker_layer_type(media_type: str) -> str:
    """Layers keep their media type, but OCI gzip layers are named the Docker way in
    the Docker manifest we write."""
    if media_type in (mf.OCI_LAYER_GZIP, mf.DOCKER_LAYER):
        return mf.DOCKER_LAYER
    return media_type


def _names_registry(term: str) -> bool:
    first = term.split("/", 1)[0]
    return "/" in term and ("." in first or ":" in first or first == "localhost")


def _registry_host(server_address: str) -> str:
    """``https://index.docker.io/v1/`` or ``host:port`` (with or without a scheme)."""
    address = server_address.strip()
    for prefix in ("https://", "http://"):
        address = address.removeprefix(prefix)
    host = address.split("/", 1)[0]
    if not host or host in ("index.docker.io", "docker.io", "registry-1.docker.io"):
        return "registry-1.docker.io"
    return host


def _familiar(name: str) -> str:
    try:
        ref = refs.parse(name, default_tag=None)
    except refs.ReferenceError:
        return name
    return ref.familiar


class _Shared:
    """One download's outcome, awaited by every pull that needs that layer."""

    def __init__(self, d: defer.Deferred) -> None:
        self._outcome: tuple[bool, Any] | None = None
        self._waiters: list[defer.Deferred] = []
        d.addBoth(self._fire)

    def _fire(self, result) -> None:
        self._outcome = (not isinstance(result, Failure), result)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            self._deliver(waiter)

    def _deliver(self, waiter: defer.Deferred) -> None:
        ok, result = self._outcome
        if ok:
            waiter.callback(result)
        else:
            waiter.errback(result)

    def wait(self) -> defer.Deferred:
        waiter: defer.Deferred = defer.Deferred()
        if self._outcome is None:
            self._waiters.append(waiter)
        else:
            self._deliver(waiter)
        return waiter
