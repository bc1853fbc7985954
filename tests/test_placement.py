"""Placement (pure): filters, ranking and affinity rules."""

from __future__ import annotations

import time

import pytest

from sdcd.core.errors import InvalidArgument
from sdcd.core.placement import Node, NoPlacement, Placed, node_views, parse_rules, place

NODES = [Node("cn1", True, 4096, 4096, 10_000), Node("cn2", True, 4096, 3000, 10_000),
         Node("cn3", True, 4096, 4096, 10_000)]  # fmt: skip


def c(name: str, node: str, **labels: str) -> Placed:
    """A container whose id is its name's hex digits, padded (unique enough here)."""
    return Placed(name.encode().hex().ljust(64, "0")[:64], name, labels, node)


WEB = c("web", "cn1", role="frontend")
DB = c("db0", "cn2", role="database")


def rules(*texts: str, label: str | None = None):
    labels = {"com.docker.swarm.affinities": label} if label else {}
    return parse_rules([f"affinity:{t}" for t in texts] + ["PATH=/bin"], labels)


def test_default_spreads_then_least_loaded():
    # cn1 and cn3 hold none of the account's containers; cn3 is as loaded as cn1: id order
    assert place(NODES, [], [], 1024).id == "cn1"
    assert place(NODES, [WEB], [], 1024).id == "cn3"
    assert place(NODES, [WEB, c("x", "cn3")], [], 1024).id == "cn2"
    # with one container everywhere, the least loaded wins
    assert place(NODES, [WEB, DB, c("x", "cn3")], [], 1024).id in ("cn1", "cn3")


def test_down_and_full_nodes_are_skipped():
    nodes = [Node("cn1", False, 4096, 4096, 10), Node("cn2", True, 4096, 512, 10),
             Node("cn3", True, 4096, 2048, 10)]  # fmt: skip
    assert place(nodes, [], [], 1024).id == "cn3"
    with pytest.raises(NoPlacement, match="no node has 4096 MiB of memory free"):
        place(nodes, [], [], 4096)
    with pytest.raises(NoPlacement, match="no compute node is up"):
        place([Node("cn1", False, 1, 1, 1)], [], [], 1)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("container==web", {"cn1"}),
        ("container!=web", {"cn2", "cn3"}),
        ("container==w*", {"cn1"}),
        ("container==/^d.0$/", {"cn2"}),
        ("role==database", {"cn2"}),
        ("role!=frontend", {"cn2", "cn3"}),
        ("role!=/front|data/", {"cn3"}),
    ],
)
def test_hard_rules(rule, expected):
    chosen = {place(NODES, [WEB, DB], rules(rule), 512).id}
    assert chosen <= expected
    # and every qualifying node is possible: remove the chosen one's advantage
    for node in expected:
        others = [n for n in NODES if n.id == node or n.id not in expected]
        assert place(others, [WEB, DB], rules(rule), 512).id == node


def test_container_rule_matches_an_id_prefix():
    assert place(NODES, [WEB, DB], rules(f"container=={DB.id[:12]}"), 512).id == "cn2"


def test_unsatisfiable_hard_rules_name_the_rule():
    with pytest.raises(NoPlacement, match="container==nothing"):
        place(NODES, [WEB, DB], rules("container==nothing"), 512)
    with pytest.raises(NoPlacement, match="container==db0"):
        place(NODES, [WEB, DB], rules("container==web", "container==db0"), 512)
    small = [Node("cn1", True, 4096, 100, 10), *NODES[1:]]
    with pytest.raises(NoPlacement, match="among those the affinity rules allow"):
        place(small, [WEB, DB], rules("container==web"), 512)


def test_soft_rules_rank_and_yield():
    assert place(NODES, [WEB, DB], rules("container==~db0"), 512).id == "cn2"
    # impossible soft rule: placed anyway
    assert place(NODES, [WEB, DB], rules("container==~nothing"), 512).id == "cn3"
    # with a hard rule too: hard filters, soft ranks (Triton dropped soft rules then)
    assert place(NODES, [WEB, DB], rules("container!=web", "container!=~db0"), 512).id == "cn3"


def test_label_syntax_and_volumes_from():
    chosen = place(NODES, [WEB, DB], rules(label='["container==web"]'), 512)
    assert chosen.id == "cn1"
    assert place(NODES, [WEB, DB], [], 512, with_node="cn2").id == "cn2"
    with pytest.raises(NoPlacement):
        place(NODES, [WEB, DB], rules("container!=db0"), 512, with_node="cn2")


@pytest.mark.parametrize(
    ("env", "label"),
    [
        (["affinity:container"], None),
        (["affinity:container<>x"], None),
        (["affinity:container==/(a/"], None),
        ([], "container==web"),
        ([], "[1, 2]"),
        ([f"affinity:container!=c{i}" for i in range(40)], None),
    ],
)
def test_bad_rules_are_400(env, label):
    with pytest.raises(InvalidArgument):
        parse_rules(env, {"com.docker.swarm.affinities": label} if label else {})


def test_hostile_patterns_stay_fast():
    many = [c(f"c{i}", f"cn{i % 3 + 1}", tag="a" * 30) for i in range(1000)]
    started = time.monotonic()
    place(NODES, many, rules("tag!=/(a+)+b/", "container!=*a*a*a*a*b"), 512)
    assert time.monotonic() - started < 2.0


def test_node_views_from_the_registry():
    records = [
        {"id": "cn1", "memory": 4096, "disk": 100, "last_seen": 95.0, "reserved_memory": 1024,
         "reserved_disk": 10},
        {"id": "cn2", "memory": 4096, "disk": 100, "last_seen": 80.0},
    ]  # fmt: skip
    one, two = node_views(records, now=100.0, window=15.0, overcommit=1.5)
    assert one == Node("cn1", True, 6144, 5120, 90)
    assert two.up is False and two.memory_free == 6144
