"""The container's ``/etc/hosts``, ``/etc/resolv.conf`` and ``/etc/hostname``.

The node writes them into the container's own files directory and bind-mounts them over
the image's, as dockerd does, so that the image is never changed and the content follows
the container's settings (``--hostname``, ``--add-host``, ``--dns*``) and its IP.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

#: The records dockerd puts in every container's /etc/hosts before anything else.
DEFAULT_HOSTS = (
    ("127.0.0.1", "localhost"),
    ("::1", "localhost ip6-localhost ip6-loopback"),
    ("fe00::0", "ip6-localnet"),
    ("ff00::0", "ip6-mcastprefix"),
    ("ff02::1", "ip6-allnodes"),
    ("ff02::2", "ip6-allrouters"),
)
#: dockerd's resolvers when the host offers none a container can reach.
DEFAULT_RESOLVERS = ["8.8.8.8", "8.8.4.4"]
#: Where systemd-resolved keeps the real upstream servers behind its 127.0.0.53 stub.
SYSTEMD_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"


def _own_names(hostname: str, domainname: str) -> str:
    """The names of the container's own record: "fqdn short", or just the hostname."""
    fqdn = f"{hostname}.{domainname}" if domainname else hostname
    short, dot, _rest = fqdn.partition(".")
    return f"{fqdn} {short}" if dot else fqdn


def _extra_host(entry: str) -> tuple[str, str]:
    """(ip, name) of one ``--add-host`` value, "name:ip" (or the newer "name=ip")."""
    sep = "=" if "=" in entry else ":"
    name, _, ip = entry.partition(sep)
    ip = ip.strip()
    if ip.startswith("[") and ip.endswith("]"):
        ip = ip[1:-1]
    return ip, name.strip()


def hosts_file(hostname: str, domainname: str, ip: str, extra_hosts: list[str]) -> str:
    """/etc/hosts as dockerd writes it: defaults, ``--add-host`` records, then our own."""
    records = list(DEFAULT_HOSTS)
    records += [_extra_host(e) for e in extra_hosts]
    if ip:
        records.append((ip, _own_names(hostname, domainname)))
    return "".join(f"{addr}\t{names}\n" for addr, names in records)


def resolv_conf(dns: list[str], search: list[str], options: list[str], fallback: list[str]) -> str:
    """/etc/resolv.conf: the user's servers, else the datacenter's, else dockerd's default."""
    servers = dns or fallback or DEFAULT_RESOLVERS
    lines = [f"nameserver {s}" for s in servers]
    if search and " ".join(search).strip() != ".":
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return "".join(line + "\n" for line in lines)


def _nameservers(path: str) -> list[str] | None:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    servers = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            servers.append(fields[1])
    return servers


def _reachable_from_container(server: str) -> bool:
    """Whether a container (own netns, IPv4 only) can use this server: no loopback."""
    try:
        addr = ipaddress.ip_address(server.split("%")[0])
    except ValueError:
        return False
    return addr.version == 4 and not addr.is_loopback


def host_resolvers(path: str = "/etc/resolv.conf") -> list[str]:
    """The node's resolvers a container can reach (the datacenter's DNS).

    Loopback servers are dropped (127.x is the container's own loopback); behind
    systemd-resolved's stub the upstream servers are used, as dockerd does. IPv6
    servers are dropped because containers get IPv4 only. None left → 8.8.8.8/8.8.4.4.
    """
    servers = _nameservers(path) or []
    if "127.0.0.53" in servers and path == "/etc/resolv.conf":
        servers = _nameservers(SYSTEMD_RESOLV_CONF) or servers
    usable = [s for s in servers if _reachable_from_container(s)]
    return usable or list(DEFAULT_RESOLVERS)


def hostname_file(hostname: str) -> str:
    """/etc/hostname: the bare hostname and a newline."""
    return hostname + "\n"


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically so a crash never leaves half a file to bind-mount."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_files(spec: dict, files_dir: Path, fallback_resolvers: list[str]) -> None:
    """Write ``hosts``, ``resolv.conf`` and ``hostname`` for node spec ``spec``.

    Blocking file I/O: call it from a thread.
    """
    files_dir.mkdir(parents=True, exist_ok=True)
    network = spec.get("network") or {}
    hostname, domainname = spec["hostname"], spec.get("domainname", "")
    _write(
        files_dir / "hosts",
        hosts_file(hostname, domainname, network.get("ip", ""), spec.get("extra_hosts", [])),
    )
    _write(
        files_dir / "resolv.conf",
        resolv_conf(
            spec.get("dns", []),
            spec.get("dns_search", []),
            spec.get("dns_options", []),
            fallback_resolvers,
        ),
    )
    _write(files_dir / "hostname", hostname_file(hostname))
