"""``ICompute``: what ``sdcd.core`` asks of a compute node.

Every argument and result is plain JSON (dicts, lists, strings, numbers), so that a
remote agent (issue 7) can carry the same calls over its internal API without
``sdcd.core`` noticing. Methods return Deferreds.

The node spec (``prepare``'s argument) is made by ``sdcd.core.containers`` from the
Docker config; its keys are documented in ``sdcd.compute.spec``. On top of those the node
reads ``image_layers`` (bottom first: ``digest``, ``diff_id``, ``media_type``, ``size``),
``restart_policy`` (``{"Name": ..., "MaximumRetryCount": n}``), ``log_driver``
(``json-file`` or ``none``) and ``stop_timeout``.

A container's *node state* (``state``/``list``/events) is::

    {"id", "status": "created"|"running"|"paused"|"restarting"|"exited"|"dead",
     "pid", "exit_code", "oom_killed", "started_at", "finished_at", "restart_count",
     "error"}

Node events, delivered to every subscriber in order per container::

    {"id", "action": "start"|"die"|"oom"|"pause"|"unpause"|"restart", "state": <node state>}
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class ComputeError(Exception):
    """A node refused or failed an operation; ``message`` is for the user."""

    def __init__(self, message: str, kind: str = "failed") -> None:
        super().__init__(message)
        self.message = message
        #: "not_found" (no such container on the node), "conflict" (wrong state),
        #: "invalid" (the spec cannot run: bad user, no such executable), "failed".
        self.kind = kind


class ILogConsumer(Interface):
    """Receives a container's log entries; may pause the source (back-pressure)."""

    def entry(stream, data, time):
        """One log line: ``stream`` "stdout"/"stderr", ``data`` bytes, RFC 3339 ``time``."""

    def registerProducer(producer, streaming):
        """The log source; ``pauseProducing``/``resumeProducing``/``stopProducing``."""

    def unregisterProducer():
        """The source is done (end of log, or the container exited when following)."""


class IStreamSink(Interface):
    """Where a stdio session's output goes (the API adapts a hijacked connection)."""

    def write(stream, data):
        """Output bytes; ``stream`` is "stdout" or "stderr" (with a tty always "stdout")."""

    def end():
        """The output ended because the process exited. Not called after a detach."""

    def registerProducer(producer, streaming):
        """The session (an IPushProducer): pause it while the sink cannot keep up."""

    def unregisterProducer():
        """The session is over."""


class IStdioSession(Interface):
    """One client's attachment to a process's stdio."""

    done = Attribute("Deferred: 'exited' (output ended, sink.end() called) or 'detached'.")
    bytes_in = Attribute("Stdin bytes accepted.")
    bytes_out = Attribute("Output bytes delivered.")

    def write_stdin(data):
        """Bytes for the process's stdin (dropped without stdin)."""

    def close_stdin():
        """The client's stdin ended (the process sees EOF when it was started for a
        single client: StdinOnce)."""

    def close():
        """Detach: the session ends, the process goes on."""


class ICompute(Interface):
    """One compute node."""

    node_id = Attribute("The node's stable id (a UUID).")

    def info():
        """Deferred dict: id, hostname, address, subnet, gateway, ncpu, memory, disk."""

    def prepare(spec):
        """Make the container ready to start: layers unpacked, rootfs mounted, network
        namespace with its IP, runtime bundle. Idempotent (a retried create after a crash
        finishes the job). Deferred None."""

    def start(cid):
        """Start (or restart) the container's process. Deferred node state. Errors:
        ComputeError kind "invalid" when the process cannot run (no such executable)."""

    def stop(cid, timeout):
        """Stop signal, then SIGKILL after ``timeout`` seconds; no restart by policy.
        Deferred node state."""

    def kill(cid, signal):
        """Send ``signal`` (name or number). Deferred None."""

    def pause(cid):
        """Freeze every process. Deferred None."""

    def unpause(cid):
        """Thaw. Deferred None."""

    def top(cid, ps_args):
        """Deferred {"Titles": [...], "Processes": [[...], ...]}."""

    def resize(cid, height, width):
        """Set the tty size. Deferred None."""

    def remove(cid):
        """Kill if running, then remove everything the node holds for the container
        (mount, network namespace, bundle, log). Idempotent. Deferred None."""

    def state(cid):
        """Deferred node state, or None when the node has no such container."""

    def list():
        """Deferred {cid: node state} of every container the node holds."""

    def logs(cid, options, consumer):
        """Send log entries to ``consumer`` (an ILogConsumer). ``options``: ``tail`` (int or
        None), ``since``/``until`` (unix seconds: a number, an exact decimal string, or
        None), ``follow`` (bool). Deferred that fires when the stream ends."""

    def attach(cid, options, sink):
        """Join the container's stdio (``options``: stdin, stdout, stderr booleans): from
        now when it runs, else from its next start. Deferred IStdioSession, which fires
        once joined (for a container not running: at its start)."""

    def exec_start(cid, exec_id, config, sink):
        """Run a process in the running container (``config``: ``args``, ``env``,
        ``user``, ``cwd``, ``tty``, ``stdin``/``stdout``/``stderr``, ``size``
        [height, width] or None). With a sink (IStreamSink) the session is joined before
        the process runs; None runs it detached. Deferred IStdioSession (``pid`` set) once
        it runs. Kind "conflict": not running, paused, or the exec id already used;
        "invalid": unknown user, or runc cannot run it (then recorded as exited 126/127)."""

    def exec_resize(cid, exec_id, height, width):
        """Set the exec's tty size. Kind "conflict" when it no longer runs."""

    def exec_inspect(exec_id):
        """Deferred {"cid", "running", "exit_code" (None while running), "pid"}, from what
        the node keeps (also for an exec started before sdcd restarted)."""

    def exec_wait(exec_id):
        """Deferred exit code, once the exec has one."""

    def subscribe(listener):
        """Call ``listener(event)`` for every node event from now on."""

    def stats(cid):
        """Deferred one sample of the container's resource use, in Docker API 1.41's
        stats shape (``sdcd.compute.stats``): without ``name``, and with zero
        ``precpu_stats`` (the caller fills it from its previous sample with
        ``stats.with_previous``). A container that does not run gives dockerd's zero
        sample. Kind "not_found" for a container the node does not hold."""

    def changes(cid):
        """Deferred ``docker diff`` list: [{"Path", "Kind" (0 modified, 1 added, 2
        deleted)}] of the container's filesystem against its image."""

    def commit_layer(cid):
        """Deferred {"digest", "diff_id", "size", "media_type"}: the container's changes
        as a gzipped image layer, published in the datacenter's blob store."""

    def export(cid, consumer):
        """Write a tar of the container's root filesystem to ``consumer`` (an IConsumer,
        with back-pressure). Deferred None once written (or the consumer stopped it)."""

    def archive_stat(cid, path):
        """Deferred ``docker cp``'s PathStat of ``path`` in the container's root (running
        or not): {"name", "size", "mode" (Go's FileMode), "mtime", "linkTarget"}; symlinks
        are resolved inside the root. Kind "not_found" when missing."""

    def archive_get(cid, path, consumer):
        """Write the tar of ``path`` (``docker cp c:path -``) to ``consumer`` with
        back-pressure; kind "not_found" before any byte when missing."""

    def archive_put(cid, path, read, no_overwrite_dir_non_dir):
        """Extract the tar ``read(n)`` gives (called in a thread; ``b""`` at its end)
        into the directory ``path``; checked whole first: an entry that is absolute,
        escapes with ``..``, is a device or goes through a symlink refuses the whole
        tar (kind "invalid") with nothing written."""

    def disk_usage(cid):
        """Deferred {"rw": bytes written by the container, "rootfs": rw + its image}."""

    def prune_layers():
        """Remove unpacked layers no container uses. Deferred list of diff_ids."""
