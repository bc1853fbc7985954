"""``docker ps``: which containers are listed, in which order, for every filter dockerd
knows, with dockerd's rules for ``all``, ``limit``, ``before`` and ``since``."""

from __future__ import annotations

import re
import time

import pytest

from sdcd.api.errors import status_of
from sdcd.api.filters import parse_filters
from sdcd.core.containerfilters import SafePattern, filter_containers, label_matches
from sdcd.core.errors import InvalidArgument, NotFound

BUSYBOX = "sha256:" + "ab12" * 16
NGINX = "sha256:" + "cd34" * 16


def summary(seq, name, state, exit_code=0, image="busybox", labels=None, **extra):
    image_id = NGINX if image.startswith("nginx") else BUSYBOX
    cid = f"{seq:02d}" + "f" * 62
    return {
        "id": cid,
        "names": [f"/{name}"],
        "image": image,
        "image_id": image_id,
        "created": 1_700_000_000 + seq,
        "state": state,
        "exit_code": exit_code,
        "labels": labels or {},
        "ancestors": [image, image_id, image_id.split(":")[1][:12]],
        "sequence": seq,
        **extra,
    }


CONTAINERS = [
    summary(1, "web", "running", labels={"role": "web", "tier": "front"}),
    summary(2, "db", "exited", 0, labels={"role": "db"}),
    summary(3, "worker_1", "exited", 137, image="busybox:latest", labels={"role": "worker"}),
    summary(4, "cache", "paused", labels={"tier": "back"}),
    summary(5, "fresh", "created", 0, started=False),
    summary(6, "batch", "restarting", 1),
    summary(7, "gone", "dead", 1),
    summary(8, "web2", "running", image="nginx:1.25", labels={"role": "web", "tier": "back"}),
]
BY_NAME = {c["names"][0][1:]: c for c in CONTAINERS}


def lookup(ref: str):
    if ref in BY_NAME:
        return BY_NAME[ref]
    matches = [c for c in CONTAINERS if c["id"].startswith(ref)]
    return matches[0] if len(matches) == 1 else None


def ps(filters=None, all_=False, limit=-1, before=None, since=None, items=CONTAINERS):
    chosen = filter_containers(list(items), filters or {}, all_, limit, before, since, lookup)
    return [c["names"][0][1:] for c in chosen]


ALL_NEWEST_FIRST = ["web2", "gone", "batch", "fresh", "cache", "worker_1", "db", "web"]


# -- all, limit, order -----------------------------------------------------------------------


def test_default_shows_running_paused_and_restarting_newest_first():
    assert ps() == ["web2", "batch", "cache", "web"]


def test_all_shows_everything_newest_first():
    assert ps(all_=True) == ALL_NEWEST_FIRST


def test_order_is_by_creation_sequence_not_input_order():
    assert ps(all_=True, items=reversed(CONTAINERS)) == ALL_NEWEST_FIRST


def test_limit_implies_all_and_applies_last():
    assert ps(limit=3) == ["web2", "gone", "batch"]
    assert ps(limit=2, filters={"label": ["role=web"]}) == ["web2", "web"]
    assert ps(limit=100) == ALL_NEWEST_FIRST
    assert ps(limit=0) == ["web2", "batch", "cache", "web"]


def test_nothing_is_an_empty_list():
    assert ps(items=[]) == []
    assert ps(filters={"name": ["nomatch"]}, all_=True) == []


# -- before, since ---------------------------------------------------------------------------


def test_before_shows_older_containers_of_any_state():
    assert ps(before="cache") == ["worker_1", "db", "web"]
    assert ps(filters={"before": ["cache"]}) == ["worker_1", "db", "web"]


def test_since_shows_newer_containers_of_any_state():
    assert ps(since="batch") == ["web2", "gone"]
    assert ps(filters={"since": ["batch"]}) == ["web2", "gone"]


def test_before_and_since_together_make_a_window():
    assert ps(filters={"since": ["db"], "before": ["batch"]}) == ["fresh", "cache", "worker_1"]


def test_several_before_values_take_the_oldest_and_since_the_newest():
    assert ps(filters={"before": ["gone", "db"]}) == ["web"]
    assert ps(filters={"since": ["db", "batch"]}) == ["web2", "gone"]
    assert ps(before="gone", filters={"before": ["cache"]}) == ["worker_1", "db", "web"]


def test_before_and_since_by_id_prefix():
    assert ps(before=BY_NAME["db"]["id"][:4]) == ["web"]
    assert ps(since=BY_NAME["gone"]["id"]) == ["web2"]


def test_before_or_since_unknown_is_404():
    with pytest.raises(NotFound, match="No such container: nope"):
        ps(before="nope")
    with pytest.raises(NotFound, match="No such container: ghost"):
        ps(filters={"since": ["ghost"]})


def test_before_with_other_filters():
    assert ps(before="gone", filters={"status": ["exited"]}) == ["worker_1", "db"]


# -- id, name --------------------------------------------------------------------------------


def test_id_is_a_prefix():
    assert ps(filters={"id": ["03"]}, all_=True) == ["worker_1"]
    assert ps(filters={"id": ["03", "04"]}, all_=True) == ["cache", "worker_1"]
    assert ps(filters={"id": ["3f"]}, all_=True) == []
    assert ps(filters={"id": [BY_NAME["web"]["id"]]}) == ["web"]


def test_id_does_not_show_stopped_containers_without_all():
    assert ps(filters={"id": ["02"]}) == []


@pytest.mark.parametrize(
    ("pattern", "names"),
    [
        ("web", ["web2", "web"]),
        ("^/web$", ["web"]),
        ("^web$", ["web"]),
        ("^/web", ["web2", "web"]),
        ("b2$", ["web2"]),
        ("w.*_\\d", ["worker_1"]),
        ("^(db|cache)$", ["cache", "db"]),
        ("[0-9]", ["web2", "worker_1"]),
        ("(?i)WEB2", ["web2"]),
        ("(", []),
        ("", ALL_NEWEST_FIRST),
    ],
)
def test_name_is_a_regular_expression_on_the_name_with_or_without_slash(pattern, names):
    assert ps(filters={"name": [pattern]}, all_=True) == names


def test_several_names_are_alternatives():
    assert ps(filters={"name": ["^db$", "^fresh$"]}, all_=True) == ["fresh", "db"]


def test_a_name_that_is_not_a_valid_pattern_still_matches_exactly():
    items = [summary(1, "a(b", "running")]
    assert ps(filters={"name": ["a(b"]}, items=items) == ["a(b"]


def test_no_pattern_can_stall_the_listing():
    items = [summary(1, "a" * 250 + "!", "running")]
    started = time.monotonic()
    for pattern in ("(a+)+$", "(a|aa)*b", "(a*)*b", "^(\\w+\\s?)*$", "^(a?){40}a{40}$"):
        assert ps(filters={"name": [pattern]}, items=items) == []
    assert time.monotonic() - started < 5


# -- label -----------------------------------------------------------------------------------


def test_label_by_key_and_by_key_value():
    assert ps(filters={"label": ["role"]}, all_=True) == ["web2", "worker_1", "db", "web"]
    assert ps(filters={"label": ["role=web"]}) == ["web2", "web"]
    assert ps(filters={"label": ["role="]}, all_=True) == []
    assert ps(filters={"label": ["nope"]}, all_=True) == []


def test_several_labels_must_all_match():
    assert ps(filters={"label": ["role=web", "tier=back"]}) == ["web2"]
    assert ps(filters={"label": ["role", "tier"]}) == ["web2", "web"]


def test_label_values_may_contain_equals_signs():
    items = [summary(1, "x", "running", labels={"cmd": "a=b"})]
    assert ps(filters={"label": ["cmd=a=b"]}, items=items) == ["x"]
    assert label_matches({"k": ""}, "k=") and label_matches({"k": ""}, "k")
    assert not label_matches({"k": "v"}, "k=")


def test_package_label_filter():
    items = [summary(1, "p", "running", labels={"com.joyent.package": "g4-highcpu-1G"})]
    assert ps(filters={"label": ["com.joyent.package=g4-highcpu-1G"]}, items=items) == ["p"]


# -- status, exited --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "names"),
    [
        ("running", ["web2", "web"]),
        ("exited", ["worker_1", "db"]),
        ("paused", ["cache"]),
        ("created", ["fresh"]),
        ("restarting", ["batch"]),
        ("dead", ["gone"]),
        ("removing", []),
    ],
)
def test_status_shows_that_state_even_without_all(status, names):
    assert ps(filters={"status": [status]}) == names


def test_several_statuses_are_alternatives():
    assert ps(filters={"status": ["created", "dead"]}) == ["gone", "fresh"]


def test_unknown_status_is_400():
    with pytest.raises(InvalidArgument) as info:
        ps(filters={"status": ["running", "sleeping"]})
    assert info.value.message == "Invalid filter 'status=sleeping'"
    assert status_of(info.value) == 400


def test_exited_matches_exit_codes_of_stopped_containers_only():
    assert ps(filters={"exited": ["0"]}, all_=True) == ["db"]
    assert ps(filters={"exited": ["137"]}, all_=True) == ["worker_1"]
    assert ps(filters={"exited": ["1"]}, all_=True) == ["gone"]  # not the restarting one
    assert ps(filters={"exited": ["0", "137"]}, all_=True) == ["worker_1", "db"]
    assert ps(filters={"exited": ["0"], "status": ["exited"]}) == ["db"]
    assert ps(filters={"exited": ["2"]}, all_=True) == []


def test_exited_needs_all_like_dockerd():
    assert ps(filters={"exited": ["0"]}) == []


def test_exited_must_be_a_number():
    with pytest.raises(InvalidArgument, match="Invalid filter 'exited=zero'"):
        ps(filters={"exited": ["zero"]})


def test_a_container_never_started_has_no_exit_code():
    items = [summary(1, "never", "exited", 0, started=False), summary(2, "ran", "exited", 0)]
    assert ps(filters={"exited": ["0"]}, all_=True, items=items) == ["ran"]


# -- ancestor --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("busybox", ["worker_1", "db", "web"]),
        ("busybox:latest", ["worker_1", "db", "web"]),
        ("library/busybox", ["worker_1", "db", "web"]),
        ("docker.io/library/busybox:latest", ["worker_1", "db", "web"]),
        ("busybox:1.36", []),
        ("nginx", []),
        ("nginx:1.25", ["web2"]),
        (NGINX, ["web2"]),
        (NGINX.split(":")[1], ["web2"]),
        ("cd34cd34", ["web2"]),
        ("sha256:cd34", ["web2"]),
        ("ab12", ["worker_1", "db", "web"]),
        ("ab1", []),  # too short to be an id prefix
        ("redis", []),
    ],
)
def test_ancestor_matches_name_tag_id_and_id_prefix(value, names):
    items = [*CONTAINERS[:3], CONTAINERS[7]]
    assert ps(filters={"ancestor": [value]}, all_=True, items=items) == names


def test_several_ancestors_are_alternatives():
    chosen = ps(filters={"ancestor": ["nginx:1.25", "busybox"]}, items=CONTAINERS[:3])
    assert chosen == ["web"]
    assert ps(filters={"ancestor": ["nginx:1.25", "busybox"]}, all_=True) == ALL_NEWEST_FIRST


def test_ancestor_known_by_another_tag_of_the_same_image():
    item = summary(1, "tagged", "running", image="app:v2")
    item["ancestors"] += ["app:v2", "app:latest", "registry.example.com:5000/app:v2"]
    assert ps(filters={"ancestor": ["app"]}, items=[item]) == ["tagged"]
    assert ps(filters={"ancestor": ["registry.example.com:5000/app:v2"]}, items=[item]) == [
        "tagged"
    ]


# -- the other keys dockerd accepts ----------------------------------------------------------


def test_unknown_filter_key_is_400():
    with pytest.raises(InvalidArgument) as info:
        ps(filters={"foo": ["bar"]})
    assert info.value.message == "Invalid filter 'foo'"


def test_health_defaults_to_none():
    items = [summary(1, "plain", "running"), summary(2, "ok", "running", health="healthy")]
    assert ps(filters={"health": ["none"]}, items=items) == ["plain"]
    assert ps(filters={"health": ["healthy", "unhealthy"]}, items=items) == ["ok"]
    with pytest.raises(InvalidArgument, match="Invalid filter 'health=fine'"):
        ps(filters={"health": ["fine"]})


def test_no_container_is_a_swarm_task():
    assert ps(filters={"is-task": ["true"]}, all_=True) == []
    assert ps(filters={"is-task": ["false"]}, all_=True) == ALL_NEWEST_FIRST
    with pytest.raises(InvalidArgument, match="Invalid filter 'is-task=maybe'"):
        ps(filters={"is-task": ["maybe"]})


def test_isolation_is_default():
    assert ps(filters={"isolation": ["default"]}) == ["web2", "batch", "cache", "web"]
    assert ps(filters={"isolation": ["hyperv"]}) == []


def test_network_by_name_or_id_prefix_bridge_by_default():
    items = [
        summary(1, "plain", "running"),
        summary(2, "fabric", "running", networks={"mynet": "9f86d081884c7d65"}),
    ]
    assert ps(filters={"network": ["bridge"]}, items=items) == ["plain"]
    assert ps(filters={"network": ["mynet"]}, items=items) == ["fabric"]
    assert ps(filters={"network": ["9f86"]}, items=items) == ["fabric"]
    assert ps(filters={"network": ["bridge", "mynet"]}, items=items) == ["fabric", "plain"]


def test_volume_by_name_or_destination():
    mounts = [{"Name": "data", "Source": "/var/x", "Destination": "/data"}]
    items = [summary(1, "v", "running", mounts=mounts), summary(2, "none", "running")]
    assert ps(filters={"volume": ["data"]}, items=items) == ["v"]
    assert ps(filters={"volume": ["/data"]}, items=items) == ["v"]
    assert ps(filters={"volume": ["other"]}, items=items) == []


def test_publish_and_expose_by_port_proto_and_range():
    items = [
        summary(1, "pub", "running", ports={"80/tcp": []}, exposed_ports={"80/tcp": {}}),
        summary(2, "exp", "running", exposed_ports={"53/udp": {}, "80/tcp": {}}),
    ]
    assert ps(filters={"publish": ["80"]}, items=items) == ["pub"]
    assert ps(filters={"publish": ["80/udp"]}, items=items) == []
    assert ps(filters={"expose": ["80/tcp"]}, items=items) == ["exp", "pub"]
    assert ps(filters={"expose": ["50-60/udp"]}, items=items) == ["exp"]
    for bad in ("8080:80", "x", "90-80"):
        with pytest.raises(InvalidArgument):
            ps(filters={"publish": [bad]})


# -- combinations and the wire forms ---------------------------------------------------------


def test_different_keys_must_all_match():
    filters = {"label": ["role"], "status": ["exited"], "ancestor": ["busybox"]}
    assert ps(filters=filters) == ["worker_1", "db"]
    assert ps(filters={**filters, "name": ["^db$"]}) == ["db"]


def test_both_wire_forms_of_filters_mean_the_same():
    new = parse_filters('{"label": ["role=web"], "status": ["running"]}')
    old = parse_filters('{"label": {"role=web": true}, "status": {"running": true}}')
    assert ps(filters=new) == ps(filters=old) == ["web2", "web"]


# -- the matcher behind name ---------------------------------------------------------------

PATTERNS = [
    "^/foo$", "foo", "fo+b?ar", "(ab|cd)*e", "[a-c]{2,3}x", r"\bweb\d+", "[^a-z]", "a{3}",
    "^$", "x|", "(a|b)*?c", r"\w+_\w+", r"[\d-]+", "a.c", "^(web|db)_[0-9]{1,2}$", r"\Bb",
    "a*", "[]a]", r"[a\-z]", r"\s", r"\S+$", r"\W", r"\D", "[^0-9_]+", "(?:ab)+",
]  # fmt: skip
TEXTS = [
    "", "/foo", "foo", "xfoo", "foobar", "fooooar", "ababcde", "abcx", "web12", "my web3",
    "ABC", "aaa", "WeB", "a", "bbbc", "x_y", "12-3", "abc", "web_12", "db_1", "db_123", "abb",
    "]", "-", "a b", "_",
]  # fmt: skip


@pytest.mark.parametrize("pattern", PATTERNS)
def test_safe_pattern_agrees_with_re(pattern):
    compiled = SafePattern.compile(pattern)
    assert compiled is not None
    for text in TEXTS:
        assert compiled.search(text) == bool(re.search(pattern, text)), text


@pytest.mark.parametrize("pattern", ["(", r"(a)\1", "(?=a)", "(?!a)", "(?<=a)b", "a{100000}"])
def test_unsupported_or_invalid_patterns_are_none(pattern):
    assert SafePattern.compile(pattern) is None
