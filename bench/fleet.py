"""Fleet scenarios of the side-by-side bench (issue 7): sdcd with three compute nodes
(``twistd sdcd-agent`` each in its own network namespace, as ``tests/datacenter.py``
builds them) beside the reference dockerd, the same docker CLI commands against both.

- populate: N existing containers on each side (``docker create -m 128m``: created, not
  started — placement counts them exactly as running ones, without N conmons or shims).
- ``docker run -d -m 128m busybox sleep 600`` latency with those N present (median, p90).
- P concurrent ``docker run -d``: wall time; then the spread over the nodes and, read
  from Redis, that no node's reserved memory passes its capacity (memory overcommit 1.0).
- placement decision time: ``core.placement.place`` over the real node records and the
  account's N+ containers (sdcd only: dockerd has one host and no placement).
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import containers
from bench.containers import IMAGE, Row, check, p90, remove
from sdcd.core import placement
from tests.conftest import wait_for
from tests.datacenter import Datacenter

#: Declared per node (MiB): room for 1,100+ containers of the 128M package over three
#: nodes with no memory overcommit (128 MiB each), and their 3 GiB disk claims.
NODE_MEMORY = 65536
NODE_DISK = 4 * 1024 * 1024
MEMORY = "128m"
WORKERS = 8


class FleetSdcd:
    """sdcd with no node of its own and three agents, over a Redis of its own."""

    label = "sdcd, 3 nodes"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.redis: subprocess.Popen | None = None
        self.dc: Datacenter | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        sock = self.root / "redis.sock"
        self.redis = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", str(sock), "--dir", str(self.root),
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(sock.exists, 10)
        self.dc = Datacenter(self.root / "dc", f"unix://{sock}", 3, NODE_MEMORY, NODE_DISK).up()
        self.certs = containers.bench_account(self.dc.daemons[0], self.root)

    def env(self) -> dict[str, str]:
        return containers.tls_env(self.dc.daemons[0], self.certs, self.root)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return containers.docker(self, *args)

    def hung(self) -> None:
        """The daemon's log says which request was slow."""

    def reserved(self) -> dict[str, tuple[int, int]]:
        """node id -> (reserved memory, capacity) in MiB, from Redis."""
        out = {}
        for agent in self.dc.agents:
            used = self.dc.redis_cli("HGET", f"{self.dc.prefix}nodeused:{agent.node_id}", "memory")
            record = json.loads(self.dc.redis_cli("HGET", f"{self.dc.prefix}nodes", agent.node_id))
            out[agent.node_id] = (int(used or 0), int(record["memory"]))
        return out

    def stop(self) -> None:
        try:
            if self.dc is not None:
                if self.dc.daemons and self.dc.daemons[0].proc.poll() is None:
                    containers.remove_all(self)
                self.dc.down()
        finally:
            if self.redis is not None:
                self.redis.send_signal(signal.SIGTERM)
                self.redis.wait(10)


class OursOnly(Row):
    """A figure dockerd has no counterpart for."""

    def cells(self) -> tuple[str, str, str]:
        return "—", f"{self.ours * 1e6:.0f} µs", "—"


def populate(target, count: int) -> tuple[float, list[str]]:
    args = ("create", "-m", MEMORY, IMAGE, "sleep", "600")
    start = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda _i: target.cli(*args), range(count)))
    elapsed = time.perf_counter() - start
    ids = [r.stdout.decode().strip() for r in results if r.returncode == 0]
    failed = [r for r in results if r.returncode != 0]
    if failed:
        raise RuntimeError(f"{target.label}: {len(failed)} creates failed: {failed[0].stderr!r}")
    return elapsed, ids


def run_latency(ref, ours, runs: int) -> list[Row]:
    args = ("run", "-d", "-m", MEMORY, IMAGE, "sleep", "600")
    times: dict[str, list[float]] = {"ref": [], "ours": []}
    for _ in range(runs):
        for key, target in (("ref", ref), ("ours", ours)):
            start = time.perf_counter()
            cid = check(target.cli(*args), f"{target.label}: run").stdout.decode().strip()
            times[key].append(time.perf_counter() - start)
            check(target.cli("rm", "-f", cid), f"{target.label}: rm")
    name = f"`docker run -d -m 128m` with {{n}} containers present, median of {runs}"
    return [
        Row(name, statistics.median(times["ref"]), statistics.median(times["ours"]), "s"),
        Row(name.replace("median", "p90"), p90(times["ref"]), p90(times["ours"]), "s"),
    ]


def parallel_runs(target, count: int) -> tuple[float, list[str]]:
    argv = ["docker", "run", "-d", "-m", MEMORY, IMAGE, "sleep", "600"]
    env = target.env()
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(count)]  # fmt: skip
    outputs = [p.communicate(timeout=containers.CLI_TIMEOUT) for p in procs]
    elapsed = time.perf_counter() - start
    ids = [out.decode().strip() for out, _ in outputs if out.strip()]
    failed = [err for p, (_, err) in zip(procs, outputs, strict=True) if p.returncode != 0]
    if failed:
        remove(target, ids)
        raise RuntimeError(f"{target.label}: {len(failed)} of {count} failed: {failed[0]!r}")
    return elapsed, ids


def placement_time(ours: FleetSdcd, calls: int = 200) -> tuple[float, float, int]:
    """Median ms of one decision without rules and with three, over the real records."""
    dc = ours.dc
    raw = json.loads(
        subprocess.run(
            [
                "redis-cli",
                "-s",
                dc.redis_url.removeprefix("unix://"),
                "--json",
                "HGETALL",
                f"{dc.prefix}nodes",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    records = []
    for node_id, value in raw.items():
        record = {**json.loads(value), "id": node_id, "last_seen": time.time()}
        used = dc.redis_cli("HGET", f"{dc.prefix}nodeused:{node_id}", "memory")
        record["reserved_memory"] = int(used or 0)
        records.append(record)
    listed = ours.cli("ps", "-a", "--no-trunc", "--format",
                      '{{.ID}} {{.Names}} {{.Label "com.joyent.sdcd.node"}}')  # fmt: skip
    placed = [
        placement.Placed(cid, name, {"role": "web"}, node)
        for cid, name, node in (line.split() for line in listed.stdout.decode().splitlines())
    ]
    views = placement.node_views(records, time.time(), 15.0)
    rules = placement.parse_rules(
        ["affinity:container!=zz*", "affinity:role==~web", "affinity:container!=/^db-[0-9]+$/"],
        {},
    )
    out = []
    for chosen in ([], rules):
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            placement.place(views, placed, chosen, 128, 3072)
            samples.append(time.perf_counter() - start)
        out.append(statistics.median(samples))
    return out[0], out[1], len(placed)


def scenarios(ref, tmp: Path, registry_host: str, args) -> list[Row]:
    """Everything above; the fleet is started and removed here, dockerd is the bench's."""
    ours = FleetSdcd(tmp / "fleet")
    rows: list[Row] = []
    ref_ids: list[str] = []
    try:
        ours.start()
        containers.load_image(ours, registry_host)
        n, p = args.fleet_containers, args.fleet_parallel
        ref_time, ref_ids = populate(ref, n)
        our_time, _ = populate(ours, n)
        rows.append(Row(f"populate: {n} x `docker create -m 128m`, 8 at a time", ref_time,
                        our_time, "s"))  # fmt: skip
        for row in run_latency(ref, ours, args.fleet_runs):
            rows.append(Row(row.name.format(n=n), row.ref, row.ours, row.unit))
        ref_par, ref_run = parallel_runs(ref, p)
        our_par, our_run = parallel_runs(ours, p)
        rows.append(Row(f"{p} x `docker run -d -m 128m` at once, {n} present, wall", ref_par,
                        our_par, "s"))  # fmt: skip
        nodes = [json.loads(ours.cli("inspect", cid).stdout)[0]["Node"]["ID"] for cid in our_run]
        spread = sorted(nodes.count(a.node_id) for a in ours.dc.agents)
        reserved = ours.reserved()
        over = {k: v for k, v in reserved.items() if v[0] > v[1]}
        if over:
            raise RuntimeError(f"overcommitted: {over}")
        none_ms, rules_ms, count = placement_time(ours)
        for what, ms in (("no rules", none_ms), ("3 affinity rules", rules_ms)):
            name = f"placement decision (`place`), 3 nodes, {count} containers, {what}"
            rows.append(OursOnly(name, 0.0, ms, "s"))
        print(f"fleet: the {p} concurrent runs landed {spread} per node; reserved/capacity "
              f"MiB per node {sorted(reserved.values())} (no overcommit)")  # fmt: skip
        remove(ref, ref_run)
        remove(ours, our_run)
    finally:
        remove(ref, ref_ids)
        ours.stop()
    return rows
