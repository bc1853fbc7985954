"""The create body: every refusal names its option, ports follow SDC (no NAT, no
remapping), command and environment merge as dockerd merges them, and bodies of every
API version normalise to what dockerd stores."""

from __future__ import annotations

import pytest

from sdcd.api.errors import status_of
from sdcd.core import createspec
from sdcd.core.createspec import (
    merge_command,
    merge_entrypoint_cmd,
    merge_env,
    normalize_create,
    parse_memory,
    parse_ports,
    refusals_check,
    restart_policy,
)
from sdcd.core.errors import InvalidArgument, NotFound


def body(**host) -> dict:
    return {"Image": "busybox", "Cmd": ["true"], "HostConfig": host}


def on_bridge(**endpoint) -> dict:
    return {"Image": "x", "NetworkingConfig": {"EndpointsConfig": {"bridge": endpoint}}}


def refused(payload: dict, **kwargs) -> str:
    with pytest.raises(InvalidArgument) as info:
        refusals_check(payload, **kwargs)
    assert status_of(info.value) == 400
    return info.value.message


# -- refusals --------------------------------------------------------------------------------

REFUSALS = [
    (body(Privileged=True), "--privileged is not supported"),
    (body(CapAdd=["SYS_ADMIN"]), "--cap-add=SYS_ADMIN is not supported"),
    (body(CapAdd=["CHOWN", "cap_net_admin"]), "--cap-add=cap_net_admin is not supported"),
    (body(CapAdd=["ALL"]), "--cap-add=ALL is not supported"),
    (body(Capabilities=["CAP_SYS_PTRACE"]), "HostConfig.Capabilities=CAP_SYS_PTRACE is not"),
    (
        body(Devices=[{"PathOnHost": "/dev/kvm", "PathInContainer": "/dev/kvm"}]),
        "--device is not supported",
    ),
    (body(DeviceRequests=[{"Count": -1}]), "--gpus is not supported"),
    (body(DeviceCgroupRules=["c 1:3 rwm"]), "--device-cgroup-rule is not supported"),
    (body(Binds=["/etc:/x"]), "host volumes are not supported: -v /etc:/x"),
    (body(Binds=["/:/host:ro"]), "host volumes are not supported: -v /:/host:ro"),
    (
        body(Mounts=[{"Type": "bind", "Source": "/etc", "Target": "/x"}]),
        "host volumes are not supported: --mount type=bind,source=/etc",
    ),
    (
        body(Mounts=[{"Type": "npipe", "Source": "x", "Target": "/x"}]),
        "host volumes are not supported: --mount type=npipe",
    ),
    (body(PidMode="host"), "--pid=host is not supported"),
    (body(PidMode="container:web"), "--pid=container:web is not supported"),
    (body(IpcMode="host"), "--ipc=host is not supported"),
    (body(IpcMode="container:web"), "--ipc=container:web is not supported"),
    (body(UsernsMode="host"), "--userns=host is not supported"),
    (body(UTSMode="host"), "--uts=host is not supported"),
    (body(CgroupnsMode="host"), "--cgroupns=host is not supported"),
    (body(Cgroup="container:web"), "--cgroup is not supported"),
    (body(SecurityOpt=["seccomp=unconfined"]), "--security-opt seccomp=unconfined is not"),
    (body(SecurityOpt=["seccomp:unconfined"]), "--security-opt seccomp=unconfined is not"),
    (
        body(SecurityOpt=['seccomp={"defaultAction": "SCMP_ACT_ALLOW"}']),
        "--security-opt seccomp=<profile> is not supported",
    ),
    (body(SecurityOpt=["apparmor=unconfined"]), "--security-opt apparmor=unconfined is not"),
    (body(SecurityOpt=["apparmor=my-profile"]), "--security-opt apparmor=my-profile is not"),
    (body(SecurityOpt=["label=disable"]), "--security-opt label=disable is not supported"),
    (body(SecurityOpt=["label:disable"]), "--security-opt label=disable is not supported"),
    (body(SecurityOpt=["label=type:spc_t"]), "--security-opt label=type:spc_t is not"),
    (
        body(SecurityOpt=["systempaths=unconfined"]),
        "--security-opt systempaths=unconfined is not supported",
    ),
    (body(SecurityOpt=["writable-cgroups=true"]), "--security-opt writable-cgroups=true is"),
    (
        body(MaskedPaths=[], ReadonlyPaths=[]),
        "--security-opt systempaths=unconfined is not supported",
    ),
    (body(MaskedPaths=["/proc/kcore"]), "HostConfig.MaskedPaths/ReadonlyPaths is not supported"),
    (body(Sysctls={"net.ipv4.ip_forward": "1"}), "--sysctl is not supported"),
    (body(NetworkMode="host"), "--net=host is not supported"),
    (body(NetworkMode="none"), "--net=none is not supported"),
    (body(NetworkMode="container:web"), "--net=container:web is not supported"),
    (body(VolumeDriver="flocker"), "--volume-driver=flocker is not supported"),
    (
        body(
            Mounts=[
                {
                    "Type": "volume",
                    "Target": "/d",
                    "VolumeOptions": {"DriverConfig": {"Name": "nfs"}},
                }
            ]
        ),
        "--mount volume-driver=nfs is not supported",
    ),
    (body(CgroupParent="/system.slice"), "--cgroup-parent is not supported"),
    (body(OomKillDisable=True), "--oom-kill-disable is not supported"),
    (body(OomScoreAdj=-500), "--oom-score-adj below 0 is not supported"),
    (body(Runtime="kata"), "--runtime=kata is not supported"),
    (body(Isolation="hyperv"), "--isolation=hyperv is not supported"),
    (body(Init=True), "--init is not supported"),
    (body(StorageOpt={"size": "120G"}), "--storage-opt is not supported"),
    (
        body(LogConfig={"Type": "syslog", "Config": {}}),
        "unsupported log driver: syslog (--log-driver)",
    ),
    (
        body(PortBindings={"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}),
        "publish port: remapping of port numbers not allowed (-p 8080:80/tcp)",
    ),
    (
        body(PortBindings={"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "80"}]}),
        "publish port: binding to a host IP address is not supported (-p 127.0.0.1:80:80/tcp)",
    ),
    (
        {"Image": "x", "MacAddress": "02:42:ac:11:00:02", "HostConfig": {}},
        "--mac-address is not supported",
    ),
    (on_bridge(IPAMConfig={"IPv4Address": "10.0.0.9"}), "--ip is not supported"),
    (on_bridge(IPAMConfig={"LinkLocalIPs": ["169.254.1.1"]}), "--link-local-ip is not"),
    (on_bridge(MacAddress="02:42:ac:11:00:02"), "--mac-address is not supported"),
]


@pytest.mark.parametrize(("payload", "message"), REFUSALS)
def test_each_refusal_is_a_400_naming_the_option(payload, message):
    assert refused(payload).startswith(message)


# Clients of API < 1.25 could send HostConfig fields at the top level; no spelling slips.
LEGACY_REFUSALS = [
    ({"Image": "x", "Privileged": True}, "--privileged"),
    ({"Image": "x", "Privileged": True, "HostConfig": {}}, "--privileged"),
    ({"Image": "x", "CapAdd": ["SYS_ADMIN"], "HostConfig": {"CapAdd": None}}, "--cap-add"),
    ({"Image": "x", "Binds": ["/etc:/etc"]}, "host volumes are not supported"),
    ({"Image": "x", "NetworkMode": "host"}, "--net=host"),
    ({"Image": "x", "PidMode": "host", "HostConfig": {"PidMode": ""}}, "--pid=host"),
    ({"Image": "x", "VolumeDriver": "convoy", "HostConfig": {}}, "--volume-driver=convoy"),
]


@pytest.mark.parametrize(("payload", "option"), LEGACY_REFUSALS)
def test_top_level_host_fields_are_checked_too(payload, option):
    assert option in refused(payload)


ALLOWED = [
    body(),
    {"Image": "busybox"},
    body(Privileged=False, CapAdd=None, CapDrop=["ALL"]),
    body(CapAdd=["NET_BIND_SERVICE", "CAP_CHOWN", "kill"]),
    body(CapDrop=["NET_RAW", "MKNOD"]),
    body(SecurityOpt=["no-new-privileges"]),
    body(SecurityOpt=["no-new-privileges:true", "no-new-privileges=false"]),
    body(SecurityOpt=["seccomp=builtin", "writable-cgroups=false"]),
    body(IpcMode="private"),
    body(IpcMode="shareable"),
    body(IpcMode="none"),
    body(CgroupnsMode="private"),
    body(NetworkMode="bridge"),
    body(NetworkMode="default"),
    body(NetworkMode=""),
    body(VolumeDriver="local"),
    body(Runtime="runc", Isolation="default"),
    body(OomScoreAdj=500, OomKillDisable=False, Init=False, ShmSize=0),
    body(Binds=["data:/data", "cache:/cache:ro", "/anon"]),
    body(Binds=["vol:/v:ro,nocopy", "v2:/w:rw,z"]),
    body(Mounts=[{"Type": "volume", "Source": "data", "Target": "/data"}]),
    body(Mounts=[{"Type": "tmpfs", "Target": "/run"}]),
    body(Tmpfs={"/run": "rw,noexec,size=65536k"}),
    body(VolumesFrom=["web", "db:ro"], Links=["db:database", "cache"]),
    body(LogConfig={"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}),
    body(LogConfig={"Type": "none", "Config": {}}),
    body(LogConfig={"Type": "", "Config": None}),
    body(RestartPolicy={"Name": "on-failure", "MaximumRetryCount": 3}),
    body(RestartPolicy={"Name": "always"}, AutoRemove=False),
    body(AutoRemove=True, RestartPolicy={"Name": "no"}),
    body(PortBindings={"80/tcp": [{"HostIp": "", "HostPort": ""}]}),
    body(PortBindings={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "80"}]}),
    body(PortBindings={"8000-8010/udp": [{"HostPort": "8000-8010"}]}),
    body(PublishAllPorts=True),
    body(
        Dns=["8.8.8.8", "2001:4860:4860::8888"], DnsSearch=["example.com"], DnsOptions=["ndots:2"]
    ),
    body(ExtraHosts=["db:10.0.0.2", "v6:[::1]"]),
    body(PidsLimit=100, Memory=512 * 1024 * 1024, CpuShares=512, Ulimits=[{"Name": "nofile"}]),
    on_bridge(Aliases=["web"]),
    {"Image": "x", "Volumes": {f"/v{i}": {} for i in range(8)}, "HostConfig": {}},
]


@pytest.mark.parametrize("payload", ALLOWED)
def test_what_is_granted_passes(payload):
    refusals_check(payload)


def test_nine_data_volumes_are_refused_counting_every_kind():
    payload = {
        "Image": "x",
        "Volumes": {f"/v{i}": {} for i in range(6)},
        "HostConfig": {
            "Binds": ["named:/n", "/v0"],
            "Mounts": [
                {"Type": "volume", "Target": "/m"},
                {"Type": "tmpfs", "Target": "/t"},
            ],
        },
    }
    refusals_check(payload)  # 8 distinct destinations (/v0 twice, tmpfs not a volume)
    payload["HostConfig"]["Binds"].append("more:/more")
    assert refused(payload) == "too many data volumes: max 8"


def test_networks_other_than_bridge_must_be_known():
    with pytest.raises(NotFound, match="network mynet not found"):
        refusals_check(body(NetworkMode="mynet"))
    refusals_check(body(NetworkMode="mynet"), known_networks={"mynet"})
    endpoints = {"Image": "x", "NetworkingConfig": {"EndpointsConfig": {"other": {}}}}
    with pytest.raises(NotFound, match="network other not found"):
        refusals_check(endpoints)
    refusals_check(endpoints, known_networks=["other"])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (body(PidMode="private"), "invalid --pid mode: private"),
        (body(IpcMode="bogus"), "invalid --ipc mode: bogus"),
        (body(UsernsMode="remap"), "invalid --userns mode: remap"),
        (body(UTSMode="x"), "invalid --uts mode: x"),
        (body(SecurityOpt=["nonsense"]), "invalid --security-opt: 'nonsense'"),
        (body(SecurityOpt=["no-new-privileges=maybe"]), "invalid --security-opt"),
        (body(OomScoreAdj=2000), "Invalid value 2000, range for oom score adj is [-1000, 1000]"),
        (body(ShmSize=-1), "SHM size can not be less than 0"),
        (body(Binds=["a:b:c:d"]), "invalid volume specification: 'a:b:c:d'"),
        (body(Binds=["data:relative"]), "invalid volume specification: 'data:relative': mount"),
        (body(Binds=["data:/"]), "invalid volume specification: 'data:/': destination can't"),
        (body(Binds=["./here:/x"]), 'create ./here: "./here" includes invalid characters'),
        (body(Binds=["data:/x:shared"]), "invalid volume specification: 'data:/x:shared'"),
        (body(Binds=["data:/x:rx"]), "invalid mode: rx"),
        (body(Mounts=[{"Type": "weird", "Target": "/x"}]), "mount type unknown: 'weird'"),
        (body(Mounts=[{"Type": "volume", "Target": "x"}]), "invalid volume specification"),
        (body(Mounts=[{"Type": "volume"}]), "invalid mount config: Target must be a string"),
        (body(Mounts=[{"Type": "tmpfs", "Source": "s", "Target": "/t"}]), "invalid mount config"),
        (body(VolumesFrom=["web:rx"]), "invalid mode for --volumes-from: web:rx"),
        (body(Tmpfs={"run": ""}), "invalid --tmpfs destination: 'run'"),
        (body(LogConfig={"Type": "json-file", "Config": {"max-size": "big"}}), "invalid size"),
        (body(LogConfig={"Type": "json-file", "Config": {"max-file": "0"}}), "max-file cannot"),
        (
            body(LogConfig={"Type": "json-file", "Config": {"syslog-address": "x"}}),
            "unknown log opt 'syslog-address' for json-file log driver",
        ),
        (
            body(AutoRemove=True, RestartPolicy={"Name": "always"}),
            "can't create 'AutoRemove' container with restart policy",
        ),
        (body(RestartPolicy={"Name": "sometimes"}), "invalid restart policy 'sometimes'"),
        (body(PortBindings={"80/xyz": []}), "invalid proto: xyz"),
        (body(PortBindings={"http": []}), 'invalid port specification: "http"'),
        (body(PortBindings={"80/tcp": [{"HostPort": "x"}]}), "invalid hostPort: x"),
        (body(Dns=["dns.example"]), "dns.example is not an ip address"),
        (body(DnsSearch=["a b"]), "invalid DnsSearch entry: 'a b'"),
        (body(ExtraHosts=["nohost"]), "bad format for add-host: 'nohost'"),
        (body(ExtraHosts=["h:notanip"]), "invalid IP address in add-host: 'notanip'"),
        ({"Image": "x", "ExposedPorts": {"0/tcp": {}}}, 'invalid port specification: "0/tcp"'),
    ],
)
def test_malformed_options_are_400(payload, message):
    assert message in refused(payload)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (body(Privileged="yes"), "HostConfig.Privileged must be a boolean"),
        (body(CapAdd="SYS_ADMIN"), "HostConfig.CapAdd must be a list of strings"),
        (body(Binds="/etc:/etc"), "HostConfig.Binds must be a list of strings"),
        (body(Mounts=["type=bind"]), "HostConfig.Mounts must be a list of objects"),
        (body(OomScoreAdj="5"), "HostConfig.OomScoreAdj must be an integer"),
        (body(NetworkMode=1), "HostConfig.NetworkMode must be a string"),
        (
            body(PortBindings={"80/tcp": "80"}),
            "HostConfig.PortBindings[80/tcp] must be a list of objects",
        ),
        ({"Image": "x", "HostConfig": "nope"}, "HostConfig must be an object"),
        ({"Image": "x", "MacAddress": 5}, "MacAddress must be a string"),
    ],
)
def test_wrong_types_are_400_not_crashes(payload, message):
    assert refused(payload) == message


def test_a_body_that_is_not_an_object_is_400():
    assert refused([]) == "config cannot be empty in order to create a container"  # type: ignore[arg-type]


# -- ports -----------------------------------------------------------------------------------


def published(port: str) -> list[dict]:
    return [{"HostIp": "0.0.0.0", "HostPort": port}]


def test_p_80_publishes_the_containers_own_port():
    bindings = {"80/tcp": [{"HostIp": "", "HostPort": ""}]}
    assert parse_ports({"80/tcp": {}}, bindings, False) == {"80/tcp": published("80")}


def test_p_80_80_is_the_same_port_and_fine():
    bindings = {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "80"}]}
    assert parse_ports({}, bindings, False) == {"80/tcp": published("80")}


def test_a_numeric_host_port_and_ipv6_any_are_accepted():
    bindings = {"53/udp": [{"HostIp": "::", "HostPort": 53}]}
    assert parse_ports(None, bindings, False) == {"53/udp": published("53")}


def test_remapping_is_refused_in_sdcs_words():
    with pytest.raises(InvalidArgument, match=r"^publish port: remapping of port numbers not"):
        parse_ports({}, {"80/tcp": [{"HostPort": "8080"}]}, False)
    with pytest.raises(InvalidArgument, match="remapping"):
        parse_ports({}, {"80/tcp": [{"HostPort": "80"}, {"HostPort": "81"}]}, False)
    with pytest.raises(InvalidArgument, match="remapping"):
        parse_ports({}, {"80/tcp": [{"HostPort": "80-90"}]}, False)


def test_ranges_expand_and_may_not_be_shifted():
    bindings = {"8000-8002/tcp": [{"HostIp": "", "HostPort": "8000-8002"}]}
    assert parse_ports({}, bindings, False) == {
        "8000/tcp": published("8000"),
        "8001/tcp": published("8001"),
        "8002/tcp": published("8002"),
    }
    assert list(parse_ports({}, {"7000-7001": [{}]}, False)) == ["7000/tcp", "7001/tcp"]
    with pytest.raises(InvalidArgument, match="remapping"):
        parse_ports({}, {"8000-8002/tcp": [{"HostPort": "9000-9002"}]}, False)
    with pytest.raises(InvalidArgument, match="remapping"):
        parse_ports({}, {"8000-8002/tcp": [{"HostPort": "8000"}]}, False)


def test_publish_all_publishes_every_exposed_port():
    exposed = {"80/tcp": {}, "443": {}, "53/udp": {}}
    assert parse_ports(exposed, {}, True) == {
        "53/udp": published("53"),
        "80/tcp": published("80"),
        "443/tcp": published("443"),
    }


def test_exposed_but_unpublished_ports_are_not_in_the_result():
    exposed = {"80/tcp": {}, "443/tcp": {}}
    assert parse_ports(exposed, {"443/tcp": [{}]}, False) == {"443/tcp": published("443")}
    assert parse_ports(exposed, {}, False) == {}


def test_an_empty_binding_list_publishes_nothing():
    assert parse_ports({}, {"80/tcp": [], "81/tcp": None}, False) == {}


def test_protocol_case_and_default():
    assert list(parse_ports({}, {"80/TCP": [{}], "81": [{}]}, False)) == ["80/tcp", "81/tcp"]


def test_port_numbers_are_checked():
    for key in ("0/tcp", "65536/tcp", "90-80/tcp", "x/tcp", "80/tcp/x"):
        with pytest.raises(InvalidArgument, match="invalid port specification"):
            parse_ports({key: {}}, {}, True)


def test_results_are_sorted_by_port_number():
    exposed = {"1000/tcp": {}, "9/tcp": {}, "80/udp": {}, "80/tcp": {}}
    assert list(parse_ports(exposed, {}, True)) == ["9/tcp", "80/tcp", "80/udp", "1000/tcp"]


# -- restart policy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, {"Name": "no", "MaximumRetryCount": 0}),
        ({}, {"Name": "no", "MaximumRetryCount": 0}),
        ({"Name": ""}, {"Name": "no", "MaximumRetryCount": 0}),
        ({"Name": "", "MaximumRetryCount": 4}, {"Name": "no", "MaximumRetryCount": 0}),
        ({"Name": "no"}, {"Name": "no", "MaximumRetryCount": 0}),
        ({"Name": "always"}, {"Name": "always", "MaximumRetryCount": 0}),
        ({"Name": "unless-stopped"}, {"Name": "unless-stopped", "MaximumRetryCount": 0}),
        ({"Name": "on-failure"}, {"Name": "on-failure", "MaximumRetryCount": 0}),
        (
            {"Name": "on-failure", "MaximumRetryCount": 3},
            {"Name": "on-failure", "MaximumRetryCount": 3},
        ),
    ],
)
def test_restart_policies(given, expected):
    assert restart_policy({"RestartPolicy": given}) == expected
    assert restart_policy({"RestartPolicy": expected}) == expected  # idempotent


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"Name": "always", "MaximumRetryCount": 2},
         "maximum retry count cannot be used with restart policy 'always'"),
        ({"Name": "no", "MaximumRetryCount": 1},
         "maximum retry count cannot be used with restart policy 'no'"),
        ({"Name": "unless-stopped", "MaximumRetryCount": -1},
         "maximum retry count cannot be used with restart policy 'unless-stopped'"),
        ({"Name": "on-failure", "MaximumRetryCount": -1}, "maximum retry count cannot be negative"),
        ({"Name": "on-failure:3"}, "invalid restart policy 'on-failure:3'"),
        ({"Name": "Always"}, "invalid restart policy 'Always'"),
        ({"Name": 1}, "HostConfig.RestartPolicy.Name must be a string"),
        ("always", "HostConfig.RestartPolicy must be an object"),
    ],
)  # fmt: skip
def test_bad_restart_policies(given, message):
    with pytest.raises(InvalidArgument) as info:
        restart_policy({"RestartPolicy": given})
    assert info.value.message == message


# -- command and environment -----------------------------------------------------------------

IMAGE = {"Entrypoint": ["/entry.sh"], "Cmd": ["serve", "--port=80"]}
SHELL_IMAGE = {"Entrypoint": None, "Cmd": ["sh"]}


@pytest.mark.parametrize(
    ("image", "config", "args"),
    [
        # nothing given: the image's entrypoint and cmd
        (IMAGE, {}, ["/entry.sh", "serve", "--port=80"]),
        (IMAGE, {"Entrypoint": None, "Cmd": None}, ["/entry.sh", "serve", "--port=80"]),
        # a cmd replaces the image's cmd, the entrypoint stays
        (IMAGE, {"Cmd": ["debug"]}, ["/entry.sh", "debug"]),
        # an entrypoint replaces the image's, and the image's cmd is dropped
        (IMAGE, {"Entrypoint": ["/bin/sh"]}, ["/bin/sh"]),
        (IMAGE, {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "ls"]}, ["/bin/sh", "-c", "ls"]),
        # strings are one-item lists (dockerd's StrSlice)
        (IMAGE, {"Entrypoint": "/bin/sh", "Cmd": "-x"}, ["/bin/sh", "-x"]),
        (SHELL_IMAGE, {"Cmd": "echo hi"}, ["echo hi"]),
        # --entrypoint "" ([""]) clears the entrypoint and does not bring the image's cmd
        (IMAGE, {"Entrypoint": [""], "Cmd": ["ls"]}, ["ls"]),
        (IMAGE, {"Entrypoint": "", "Cmd": ["ls", "-l"]}, ["ls", "-l"]),
        # an explicit [] entrypoint clears the image's; the image's cmd then applies
        (IMAGE, {"Entrypoint": []}, ["serve", "--port=80"]),
        (IMAGE, {"Entrypoint": [], "Cmd": ["x"]}, ["x"]),
        # an empty cmd is "not given"
        (IMAGE, {"Cmd": []}, ["/entry.sh", "serve", "--port=80"]),
        (SHELL_IMAGE, {}, ["sh"]),
        ({}, {"Cmd": ["true"]}, ["true"]),
        ({"Cmd": "sh"}, {}, ["sh"]),
    ],
)
def test_merge_command_as_dockerd(image, config, args):
    assert merge_command(image, config) == args


@pytest.mark.parametrize(
    ("image", "config"),
    [
        ({}, {}),
        ({"Entrypoint": None, "Cmd": None}, {"Cmd": []}),
        (IMAGE, {"Entrypoint": [""]}),
        (SHELL_IMAGE, {"Entrypoint": [""]}),
        ({"Entrypoint": [""]}, {}),
    ],
)
def test_no_command_is_400(image, config):
    with pytest.raises(InvalidArgument) as info:
        merge_command(image, config)
    assert info.value.message == "No command specified"


def test_merged_entrypoint_and_cmd_as_inspect_shows_them():
    assert merge_entrypoint_cmd(IMAGE, {}) == (["/entry.sh"], ["serve", "--port=80"])
    assert merge_entrypoint_cmd(IMAGE, {"Entrypoint": [""], "Cmd": ["ls"]}) == (None, ["ls"])
    assert merge_entrypoint_cmd(IMAGE, {"Entrypoint": ["/x"]}) == (["/x"], None)
    assert merge_entrypoint_cmd(IMAGE, {"Entrypoint": []}) == ([], ["serve", "--port=80"])


IMAGE_ENV = ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=/root"]


@pytest.mark.parametrize(
    ("env", "merged"),
    [
        ([], IMAGE_ENV),
        (None, IMAGE_ENV),
        (["A=1"], ["A=1", *IMAGE_ENV]),
        (["LANG=fr_FR.UTF-8", "B=2"], ["LANG=fr_FR.UTF-8", "B=2", IMAGE_ENV[0], IMAGE_ENV[2]]),
        (["HOME=/tmp", "PATH=/x"], ["HOME=/tmp", "PATH=/x", "LANG=C.UTF-8"]),
        # a bare name is kept as given and hides the image's variable of that name
        (["LANG"], ["LANG", IMAGE_ENV[0], IMAGE_ENV[2]]),
        # an empty value is a value
        (["LANG="], ["LANG=", IMAGE_ENV[0], IMAGE_ENV[2]]),
        # the user's duplicates are kept as given; values may hold "="
        (["A=1", "A=2", "Q=a=b"], ["A=1", "A=2", "Q=a=b", *IMAGE_ENV]),
    ],
)
def test_merge_env_as_dockerd(env, merged):
    assert merge_env(IMAGE_ENV, env) == merged


def test_merge_env_without_image_env():
    assert merge_env(None, ["A=1"]) == ["A=1"]
    assert merge_env([], []) == []


# -- memory ----------------------------------------------------------------------------------


def test_parse_memory():
    assert parse_memory({}) == 0
    assert parse_memory({"Memory": None}) == 0
    assert parse_memory({"Memory": 0}) == 0
    assert parse_memory({"Memory": 536870912}) == 536870912
    for bad in (-1, "512m", 1.5, True):
        with pytest.raises(InvalidArgument):
            parse_memory({"Memory": bad})


def test_old_clients_top_level_memory_is_read_for_api_1_24():
    payload = {"Image": "x", "Memory": 268435456, "HostConfig": {"Memory": 0}}
    _, host = normalize_create(payload, (1, 24))
    assert parse_memory(host) == 268435456
    _, host = normalize_create(payload, (1, 25))
    assert parse_memory(host) == 0


# -- normalisation ---------------------------------------------------------------------------


def test_defaults_as_dockerd_stores_them():
    config, host = normalize_create({"Image": "busybox"}, (1, 24))
    assert config == {
        "Hostname": "",
        "Domainname": "",
        "User": "",
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "ExposedPorts": None,
        "Tty": False,
        "OpenStdin": False,
        "StdinOnce": False,
        "Env": [],
        "Cmd": None,
        "Image": "busybox",
        "Volumes": None,
        "WorkingDir": "",
        "Entrypoint": None,
        "NetworkDisabled": False,
        "OnBuild": None,
        "Labels": {},
    }
    assert host["NetworkMode"] == "default"
    assert host["LogConfig"] == {"Type": "json-file", "Config": {}}
    assert host["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    assert host["PortBindings"] == {}
    assert host["ShmSize"] == 64 * 1024 * 1024
    assert host["Runtime"] == "runc"
    assert host["IpcMode"] == "shareable"
    assert host["Dns"] == [] and host["DnsSearch"] == [] and host["DnsOptions"] == []
    assert host["Binds"] is None and host["CapAdd"] is None and host["Links"] is None
    assert host["Privileged"] is False and host["PublishAllPorts"] is False
    assert host["Memory"] == 0 and host["PidsLimit"] is None
    assert host["ConsoleSize"] == [0, 0]
    for omitted in ("Tmpfs", "Sysctls", "Mounts", "Init", "MaskedPaths", "StorageOpt"):
        assert omitted not in host


def test_ipc_mode_default_is_private_from_api_1_40():
    assert normalize_create({"Image": "x"}, (1, 39))[1]["IpcMode"] == "shareable"
    assert normalize_create({"Image": "x"}, (1, 40))[1]["IpcMode"] == "private"
    given = {"Image": "x", "HostConfig": {"IpcMode": "none"}}
    assert normalize_create(given, (1, 41))[1]["IpcMode"] == "none"


def test_user_values_are_kept():
    payload = {
        "Image": "busybox:1.36",
        "Hostname": "web-1",
        "Domainname": "example.com",
        "User": "nobody:nogroup",
        "AttachStdin": True,
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": True,
        "OpenStdin": True,
        "StdinOnce": True,
        "Env": ["A=1"],
        "Cmd": "sh",
        "Entrypoint": ["/bin/busybox"],
        "Labels": {"com.joyent.package": "g4-highcpu-128M"},
        "WorkingDir": "/srv",
        "StopSignal": "SIGINT",
        "StopTimeout": 3,
        "ExposedPorts": {"80": {}, "53/udp": {}},
        "Volumes": {"/data": {}},
        "Healthcheck": {"Test": ["NONE"]},
        "HostConfig": {
            "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2},
            "PortBindings": {"80": [{"HostPort": "80"}], "90-91/tcp": [{}]},
            "LogConfig": {"Type": "none"},
            "AutoRemove": True,
            "ShmSize": 1024,
            "Tmpfs": {"/run": ""},
        },
    }
    config, host = normalize_create(payload, (1, 41))
    assert config["Cmd"] == ["sh"]
    assert config["Entrypoint"] == ["/bin/busybox"]
    assert config["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert config["Volumes"] == {"/data": {}}
    assert config["Labels"] == {"com.joyent.package": "g4-highcpu-128M"}
    assert (config["StopSignal"], config["StopTimeout"]) == ("SIGINT", 3)
    assert config["Healthcheck"] == {"Test": ["NONE"]}
    assert config["Tty"] and config["OpenStdin"] and config["StdinOnce"]
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert host["PortBindings"] == {
        "80/tcp": [{"HostIp": "", "HostPort": "80"}],
        "90/tcp": [{"HostIp": "", "HostPort": ""}],
        "91/tcp": [{"HostIp": "", "HostPort": ""}],
    }
    assert host["LogConfig"] == {"Type": "none", "Config": {}}
    assert host["AutoRemove"] is True
    assert host["ShmSize"] == 1024
    assert host["Tmpfs"] == {"/run": ""}


def test_normalize_does_not_share_state_with_the_body_or_defaults():
    payload = {"Image": "x", "Labels": {"a": "b"}}
    config, host = normalize_create(payload, (1, 41))
    config["Labels"]["c"] = "d"
    config["Env"].append("X=1")
    host["Dns"].append("1.1.1.1")
    assert payload["Labels"] == {"a": "b"}
    again, host_again = normalize_create({"Image": "x"}, (1, 41))
    assert again["Env"] == [] and host_again["Dns"] == []


def test_api_1_24_reads_a_hostconfig_sent_at_the_top_level():
    payload = {"Image": "x", "Binds": ["data:/data"], "Memory": 1024, "Cpuset": "0-1",
               "RestartPolicy": {"Name": "always"}, "NetworkMode": "bridge"}  # fmt: skip
    _, host = normalize_create(payload, (1, 21))
    assert host["Binds"] == ["data:/data"]
    assert host["Memory"] == 1024
    assert host["CpusetCpus"] == "0-1"
    assert host["RestartPolicy"] == {"Name": "always", "MaximumRetryCount": 0}
    assert host["NetworkMode"] == "bridge"
    _, modern = normalize_create(payload, (1, 41))
    assert modern["Binds"] is None and modern["Memory"] == 0
    assert modern["RestartPolicy"]["Name"] == "no"


def test_api_1_24_folds_only_some_top_level_fields_into_a_given_hostconfig():
    payload = {"Image": "x", "Memory": 1024, "MemorySwap": 2048, "CpuShares": 10,
               "VolumeDriver": "local", "Binds": ["data:/d"],
               "HostConfig": {"MemorySwap": 4096}}  # fmt: skip
    _, host = normalize_create(payload, (1, 24))
    assert (host["Memory"], host["MemorySwap"], host["CpuShares"]) == (1024, 4096, 10)
    assert host["VolumeDriver"] == "local"
    assert host["Binds"] is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "config cannot be empty in order to create a container"),
        ({"Image": 5}, "Image must be a string"),
        ({"Image": "x", "Env": "A=1"}, "Env must be a list of strings"),
        ({"Image": "x", "Env": ["A=1", 2]}, "Env must be a list of strings"),
        ({"Image": "x", "Env": ["=1"]}, "invalid environment variable: =1"),
        ({"Image": "x", "Cmd": {"a": 1}}, "Cmd must be a list of strings"),
        ({"Image": "x", "Cmd": [1]}, "Cmd must be a list of strings"),
        ({"Image": "x", "Entrypoint": 5}, "Entrypoint must be a list of strings"),
        ({"Image": "x", "Labels": ["a=b"]}, "Labels must be an object of strings"),
        ({"Image": "x", "Labels": {"a": 1}}, "Labels must be an object of strings"),
        ({"Image": "x", "Tty": "true"}, "Tty must be a boolean"),
        ({"Image": "x", "StopTimeout": "10"}, "StopTimeout must be an integer"),
        ({"Image": "x", "ExposedPorts": ["80/tcp"]}, "ExposedPorts must be an object"),
        ({"Image": "x", "Volumes": {"data": {}}}, "invalid volume specification: 'data'"),
        ({"Image": "x", "Hostname": "bad_host"}, "invalid hostname format: bad_host"),
        ({"Image": "x", "Hostname": "a" * 64}, "invalid hostname format"),
        ({"Image": "x", "Domainname": "ex ample"}, "invalid domainname format: ex ample"),
        ({"Image": "x", "WorkingDir": "srv"}, "the working directory 'srv' is invalid"),
        ({"Image": "x", "StopSignal": "SIGNOPE"}, "Invalid signal: SIGNOPE"),
        ({"Image": "x", "HostConfig": {"Memory": "1g"}}, "HostConfig.Memory must be an integer"),
        ({"Image": "x", "HostConfig": {"Dns": "8.8.8.8"}}, "HostConfig.Dns must be a list"),
        ({"Image": "x", "HostConfig": {"Tmpfs": {"/r": 1}}}, "HostConfig.Tmpfs must be an"),
        ({"Image": "x", "HostConfig": {"LogConfig": {"Type": "gelf"}}}, "unsupported log"),
        ({"Image": "x", "HostConfig": {"RestartPolicy": {"Name": "x"}}}, "invalid restart"),
        ({"Image": "x", "HostConfig": []}, "HostConfig must be an object"),
    ],
)
def test_normalize_refuses_bad_bodies(payload, message):
    with pytest.raises(InvalidArgument) as info:
        normalize_create(payload, (1, 41))
    assert message in info.value.message


def test_valid_hostnames():
    for name in ("web", "web-1", "a.b.c", "1abc", "a" * 63, "x.y-z.example"):
        config, _ = normalize_create({"Image": "x", "Hostname": name}, (1, 41))
        assert config["Hostname"] == name


@pytest.mark.parametrize(
    ("name", "valid"),
    [("SIGTERM", True), ("TERM", True), ("sigkill", True), ("9", True), ("64", True),
     ("SIGRTMIN+3", True), ("RTMAX-2", True), ("0", False), ("65", False), ("SIGFOO", False),
     ("RTMIN+99", False), ("", False)],
)  # fmt: skip
def test_valid_signal(name, valid):
    assert createspec.valid_signal(name) is valid


def test_resource_options_the_package_decides_get_warnings():
    _, host = normalize_create(body(CpuShares=512, CpusetCpus="0", Memory=1 << 30), (1, 41))
    assert createspec.resource_warnings(host) == [
        "CpuShares is ignored: resources come from the package",
        "CpusetCpus is ignored: resources come from the package",
    ]
    assert createspec.resource_warnings(normalize_create(body(), (1, 41))[1]) == []
