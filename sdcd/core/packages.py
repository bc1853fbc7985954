"""Packages: the resources a container gets, chosen as SDC Docker chose them.

A user never asks for CPU shares or a disk quota: they get the package that the label
``com.joyent.package`` names (by name, uuid or the uuid's first 8 hex digits), or else
the smallest package with at least the memory of ``-m`` (1024 MiB without ``-m``).
When nothing fits, SDC answered 422 "no package supports the given container
constraints: ..." and so do we. Pure logic: no I/O.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from sdcd.core.errors import InvalidArgument, Unprocessable

PACKAGE_LABEL = "com.joyent.package"
MIB = 1024 * 1024
CPU_PERIOD = 100_000  # µs; a cpu_cap of 100 (one CPU) is a quota of one whole period
MIN_SHARES, MAX_SHARES = 2, 262144
# uuid5 namespace of the built-in packages' uuids (fixed, so they never change).
PACKAGE_NAMESPACE = uuid.UUID("5f0c6bde-4f0e-5b7a-9a55-7364636470a1")

# SDC's rule for a package name given in the label (and so for any package's name):
# letters and digits at both ends, no two separators in a row.
_NAME_RE = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9_.-]*[a-zA-Z0-9])?")
_DOUBLE_SEPARATOR_RE = re.compile(r"[_.-][_.-]")
_SHORT_UUID_RE = re.compile(r"[0-9a-f]{8}")


@attrs.frozen
class Package:
    """One operator-defined size. Sizes in MiB; ``swap`` is the total of memory and swap
    (as ``docker run --memory-swap``), ``cpu_cap`` is percent of one CPU (0: no cap),
    ``pids`` the process limit (0: none)."""

    name: str
    uuid: str
    memory: int
    swap: int
    cpu_shares: int
    cpu_cap: int
    disk: int
    pids: int

    @property
    def short_uuid(self) -> str:
        return self.uuid[:8]

    def limits(self, pids_limit: int | None = None) -> dict[str, int]:
        """The node's cgroup resources for this package. A user's ``--pids-limit`` only
        tightens: the package is the ceiling (a limit above it is not granted)."""
        pids = self.pids
        if pids_limit is not None and pids_limit > 0:
            pids = min(pids, pids_limit) if pids else pids_limit
        return {
            "memory": self.memory * MIB,
            "memory_swap": self.swap * MIB,
            "cpu_shares": self.cpu_shares,
            "cpu_quota": self.cpu_cap * CPU_PERIOD // 100,
            "cpu_period": CPU_PERIOD,
            "pids_limit": pids,
        }

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Package:
        return cls(**{f.name: data[f.name] for f in attrs.fields(cls)})


def _builtin(label: str, memory: int, cpu_cap: int, disk_gib: int, pids: int) -> Package:
    name = f"g4-highcpu-{label}"
    return Package(
        name=name,
        uuid=str(uuid.uuid5(PACKAGE_NAMESPACE, name)),
        memory=memory,
        swap=2 * memory,
        cpu_shares=memory,  # 1024 for 1 GiB, dockerd's default weight
        cpu_cap=cpu_cap,
        disk=disk_gib * 1024,
        pids=pids,
    )


# The built-in set, named like Triton's high-CPU line so that labels users already
# write keep working. Every step doubles memory, CPU weight, disk and processes.
DEFAULT_PACKAGES: tuple[Package, ...] = (
    _builtin("128M", 128, 25, 3, 512),
    _builtin("256M", 256, 50, 5, 1024),
    _builtin("512M", 512, 100, 10, 1024),
    _builtin("1G", 1024, 100, 25, 2048),
    _builtin("2G", 2048, 200, 50, 4096),
    _builtin("4G", 4096, 400, 100, 8192),
    _builtin("8G", 8192, 800, 200, 16384),
    _builtin("16G", 16384, 1600, 400, 32768),
)

# key -> (required, minimum); missing optional keys get the defaults in _defaults().
_KEYS: dict[str, tuple[bool, int]] = {
    "name": (True, 0),
    "uuid": (False, 0),
    "memory": (True, 1),
    "swap": (False, 1),
    "cpu_shares": (False, 2),  # the kernel's cpu.shares range is 2..262144
    "cpu_cap": (False, 0),
    "disk": (False, 1),
    "pids": (False, 0),
}


def valid_package_name(name: str) -> bool:
    """SDC's rule for package names (the same for the label's value)."""
    return bool(_NAME_RE.fullmatch(name)) and not _DOUBLE_SEPARATOR_RE.search(name)


def parse_packages(tables: list[dict]) -> tuple[Package, ...]:
    """Packages from the configuration's ``[[packages]]`` tables, validated whole.

    Keys: ``name`` and ``memory`` (MiB) are required; ``uuid`` defaults to a uuid5 of
    the name, ``swap`` to twice the memory, ``cpu_shares`` to the memory in MiB,
    ``cpu_cap`` to 0 (no cap), ``disk`` to 10240 MiB, ``pids`` to 0 (no limit).
    Raises ``ValueError`` with one line naming the entry at fault.
    """
    if not isinstance(tables, list) or not tables:
        raise ValueError("at least one [[packages]] entry is needed")
    out = [_parse_one(i, table) for i, table in enumerate(tables)]
    _check_unique(out, "name")
    _check_unique(out, "uuid")
    return tuple(out)


def _parse_one(index: int, table: Any) -> Package:
    where = f"packages[{index}]"
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table")
    if isinstance(table.get("name"), str):
        where += f" ({table['name']})"
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}")
    for key, (required, _minimum) in _KEYS.items():
        if required and key not in table:
            raise ValueError(f"{where}: {key} is required")
    name = table["name"]
    if not isinstance(name, str) or not valid_package_name(name):
        raise ValueError(
            f"{where}: name must be letters, digits and single '.', '_' or '-' between "
            f"them, not {name!r}"
        )
    values = _defaults(table)
    for key, (_required, minimum) in _KEYS.items():
        if key in ("name", "uuid"):
            continue
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{where}: {key} must be a whole number >= {minimum}, not {value!r}")
    if values["cpu_shares"] > MAX_SHARES:
        raise ValueError(f"{where}: cpu_shares must be at most {MAX_SHARES}")
    if values["swap"] < values["memory"]:
        raise ValueError(f"{where}: swap (memory + swap, MiB) must be at least memory")
    values["uuid"] = _canonical_uuid(values["uuid"], where)
    return Package(**values)


def _defaults(table: dict) -> dict[str, Any]:
    memory = table["memory"]
    return {
        "name": table["name"],
        "uuid": table.get("uuid", str(uuid.uuid5(PACKAGE_NAMESPACE, table["name"]))),
        "memory": memory,
        "swap": table.get("swap", 2 * memory if isinstance(memory, int) else memory),
        "cpu_shares": table.get("cpu_shares", _default_shares(memory)),
        "cpu_cap": table.get("cpu_cap", 0),
        "disk": table.get("disk", 10240),
        "pids": table.get("pids", 0),
    }


def _default_shares(memory: Any) -> Any:
    """As many shares as MiB of memory, within the kernel's range."""
    return min(max(memory, MIN_SHARES), MAX_SHARES) if isinstance(memory, int) else memory


def _canonical_uuid(value: Any, where: str) -> str:
    try:
        if isinstance(value, str):
            return str(uuid.UUID(value))
    except ValueError:
        pass
    raise ValueError(f"{where}: uuid must be a UUID, not {value!r}")


def _check_unique(packages: list[Package], field: str) -> None:
    seen: set[str] = set()
    for package in packages:
        value = getattr(package, field)
        if value in seen:
            raise ValueError(f"two packages have the {field} {value}")
        seen.add(value)


def select_package(
    packages: Iterable[Package],
    labels: Mapping[str, str],
    memory_bytes: int,
    default_memory_mib: int = 1024,
) -> Package:
    """The package for a new container (SDC's rules).

    The label ``com.joyent.package`` picks one exactly and ``-m`` is then ignored;
    otherwise the smallest package with at least ``memory_bytes`` (0: the default
    memory) of memory. Ties go to the first listed.
    """
    packages = tuple(packages)
    wanted = labels.get(PACKAGE_LABEL) if labels else None
    if wanted is not None:
        return _by_label(packages, wanted)
    if memory_bytes < 0:
        raise InvalidArgument(f"invalid memory: {memory_bytes}")
    target = memory_bytes or default_memory_mib * MIB
    fitting = [p for p in packages if p.memory * MIB >= target]
    if not fitting:
        raise no_package(f"memory={human_size(target)}")
    return min(fitting, key=lambda p: p.memory)


def _by_label(packages: tuple[Package, ...], wanted: Any) -> Package:
    """By name first, then full uuid, then a unique short uuid (SDC's precedence)."""
    if not isinstance(wanted, str) or not valid_package_name(wanted):
        raise InvalidArgument(f"invalid value for {PACKAGE_LABEL}: {wanted}")
    for package in packages:
        if package.name == wanted:
            return package
    lowered = wanted.lower()
    for package in packages:
        if package.uuid == lowered:
            return package
    if _SHORT_UUID_RE.fullmatch(wanted):
        matches = [p for p in packages if p.short_uuid == wanted]
        if len(matches) == 1:
            return matches[0]
    raise no_package(f"{PACKAGE_LABEL}={wanted}")


def no_package(constraint: str) -> Unprocessable:
    """SDC's NoSufficientPackageError (422), word for word."""
    return Unprocessable(f"no package supports the given container constraints: {constraint}")


def human_size(size: int) -> str:
    """SDC's ``humanSizeFromBytes``: the whole number of the largest unit, ``65g``."""
    if size <= 0:
        return "0b"
    units = "bkmgt"
    power = 0
    while power < len(units) - 1 and size >= 1024 ** (power + 1):
        power += 1
    return f"{size // 1024**power}{units[power]}"
