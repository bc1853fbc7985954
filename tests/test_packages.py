"""Packages: the built-in set, the [[packages]] configuration, and SDC's selection rules
(label by name, uuid or short uuid over -m; -m to the smallest fit; 1 GiB by default;
422 in SDC's words when nothing fits)."""

from __future__ import annotations

import itertools
import uuid

import pytest

from sdcd.api.errors import status_of
from sdcd.core import packages
from sdcd.core.errors import InvalidArgument, Unprocessable
from sdcd.core.packages import DEFAULT_PACKAGES, MIB, Package, parse_packages, select_package

GIB = 1024 * MIB


def by_name(name: str) -> Package:
    return next(p for p in DEFAULT_PACKAGES if p.name == name)


# -- the built-in set ------------------------------------------------------------------------


def test_default_set_is_the_high_cpu_line_from_128m_to_16g():
    assert [p.memory for p in DEFAULT_PACKAGES] == [128 * 2**i for i in range(8)]
    assert [p.name for p in DEFAULT_PACKAGES][:4] == [
        "g4-highcpu-128M",
        "g4-highcpu-256M",
        "g4-highcpu-512M",
        "g4-highcpu-1G",
    ]
    assert DEFAULT_PACKAGES[-1].name == "g4-highcpu-16G"


def test_default_uuids_are_fixed_uuid5_and_short_uuids_unique():
    for p in DEFAULT_PACKAGES:
        assert p.uuid == str(uuid.uuid5(packages.PACKAGE_NAMESPACE, p.name))
        assert uuid.UUID(p.uuid).version == 5
    assert len({p.short_uuid for p in DEFAULT_PACKAGES}) == len(DEFAULT_PACKAGES)


def test_default_set_is_valid_by_the_configuration_rules():
    tables = [p.to_json() for p in DEFAULT_PACKAGES]
    assert parse_packages(tables) == DEFAULT_PACKAGES


def test_default_sizes_grow_with_memory():
    for small, big in itertools.pairwise(DEFAULT_PACKAGES):
        assert big.cpu_shares > small.cpu_shares
        assert big.disk > small.disk
        assert big.pids >= small.pids >= 512
        assert big.swap >= big.memory
    assert by_name("g4-highcpu-1G").cpu_shares == 1024  # dockerd's default weight


def test_limits_in_the_nodes_units():
    p = Package("p", str(uuid.uuid4()), 512, 1024, 512, 100, 10240, 1000)
    assert p.limits() == {
        "memory": 512 * MIB,
        "memory_swap": 1024 * MIB,
        "cpu_shares": 512,
        "cpu_quota": 100_000,
        "cpu_period": 100_000,
        "pids_limit": 1000,
    }


def test_limits_cap_zero_means_no_quota_and_fractions_scale():
    p = Package("p", str(uuid.uuid4()), 128, 256, 128, 0, 1024, 0)
    assert p.limits()["cpu_quota"] == 0
    assert p.limits()["pids_limit"] == 0
    assert (
        Package("q", str(uuid.uuid4()), 128, 256, 128, 25, 1024, 0).limits()["cpu_quota"] == 25_000
    )
    assert (
        Package("r", str(uuid.uuid4()), 128, 256, 128, 250, 1024, 0).limits()["cpu_quota"]
        == 250_000
    )


def test_user_pids_limit_only_tightens():
    p = Package("p", str(uuid.uuid4()), 128, 256, 128, 0, 1024, 1000)
    assert p.limits(pids_limit=100)["pids_limit"] == 100
    assert p.limits(pids_limit=5000)["pids_limit"] == 1000
    assert p.limits(pids_limit=-1)["pids_limit"] == 1000
    assert p.limits(pids_limit=0)["pids_limit"] == 1000
    unlimited = Package("u", str(uuid.uuid4()), 128, 256, 128, 0, 1024, 0)
    assert unlimited.limits(pids_limit=64)["pids_limit"] == 64


def test_json_round_trip():
    p = by_name("g4-highcpu-2G")
    assert Package.from_json(p.to_json()) == p
    assert p.to_json()["memory"] == 2048


# -- configuration ---------------------------------------------------------------------------


def test_parse_minimal_entry_gets_defaults():
    (p,) = parse_packages([{"name": "small", "memory": 256}])
    assert p == Package(
        name="small",
        uuid=str(uuid.uuid5(packages.PACKAGE_NAMESPACE, "small")),
        memory=256,
        swap=512,
        cpu_shares=256,
        cpu_cap=0,
        disk=10240,
        pids=0,
    )


def test_parse_full_entry_and_uuid_canonicalised():
    u = uuid.uuid4()
    (p,) = parse_packages(
        [
            {
                "name": "big.one",
                "uuid": str(u).upper(),
                "memory": 4096,
                "swap": 4096,
                "cpu_shares": 2000,
                "cpu_cap": 350,
                "disk": 51200,
                "pids": 4000,
            }
        ]
    )
    assert p.uuid == str(u)
    assert (p.swap, p.cpu_shares, p.cpu_cap, p.disk, p.pids) == (4096, 2000, 350, 51200, 4000)


def test_parse_default_shares_stay_in_the_kernels_range():
    (tiny, huge) = parse_packages(
        [{"name": "tiny", "memory": 1}, {"name": "huge", "memory": 2**20}]
    )
    assert tiny.cpu_shares == 2
    assert huge.cpu_shares == 262144


@pytest.mark.parametrize(
    ("tables", "words"),
    [
        ([], "at least one"),
        (["x"], "packages[0] must be a table"),
        ([{"memory": 128}], "packages[0]: name is required"),
        ([{"name": "a"}], "packages[0] (a): memory is required"),
        ([{"name": "a", "memory": 0}], "packages[0] (a): memory must be a whole number >= 1"),
        ([{"name": "a", "memory": -5}], "memory must be"),
        ([{"name": "a", "memory": 1.5}], "memory must be"),
        ([{"name": "a", "memory": True}], "memory must be"),
        ([{"name": "a", "memory": "1G"}], "memory must be"),
        ([{"name": "a", "memory": 128, "swap": 64}], "swap (memory + swap, MiB) must be at least"),
        ([{"name": "a", "memory": 128, "cpu_shares": 1}], "cpu_shares must be a whole number >= 2"),
        ([{"name": "a", "memory": 128, "cpu_shares": 300000}], "cpu_shares must be at most"),
        ([{"name": "a", "memory": 128, "cpu_cap": -1}], "cpu_cap must be"),
        ([{"name": "a", "memory": 128, "disk": 0}], "disk must be"),
        ([{"name": "a", "memory": 128, "pids": -1}], "pids must be"),
        ([{"name": "a", "memory": 128, "uuid": "nope"}], "uuid must be a UUID"),
        ([{"name": "a", "memory": 128, "uuid": 7}], "uuid must be a UUID"),
        ([{"name": "a", "memory": 128, "ram": 1}], "packages[0] (a): unknown key 'ram'"),
        ([{"name": "-bad", "memory": 128}], "name must be letters"),
        ([{"name": "a--b", "memory": 128}], "name must be letters"),
        ([{"name": "a b", "memory": 128}], "name must be letters"),
        ([{"name": 5, "memory": 128}], "packages[0]: name must be"),
        ([{"name": "a", "memory": 1}, {"name": "a", "memory": 2}], "two packages have the name a"),
    ],
)
def test_parse_refuses_with_one_line_naming_the_entry(tables, words):
    with pytest.raises(ValueError) as info:
        parse_packages(tables)
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_refuses_duplicate_uuids():
    u = str(uuid.uuid4())
    with pytest.raises(ValueError, match=f"two packages have the uuid {u}"):
        parse_packages(
            [{"name": "a", "memory": 1, "uuid": u}, {"name": "b", "memory": 2, "uuid": u}]
        )


def test_parse_names_the_second_entry():
    with pytest.raises(ValueError, match=r"packages\[1\] \(b\): memory"):
        parse_packages([{"name": "a", "memory": 1}, {"name": "b", "memory": 0}])


# -- selection -------------------------------------------------------------------------------


def test_no_memory_means_the_default_1_gib():
    assert select_package(DEFAULT_PACKAGES, {}, 0).name == "g4-highcpu-1G"


def test_default_memory_is_configurable():
    assert select_package(DEFAULT_PACKAGES, {}, 0, default_memory_mib=256).memory == 256


@pytest.mark.parametrize(
    ("memory", "name"),
    [
        (1, "g4-highcpu-128M"),
        (128 * MIB, "g4-highcpu-128M"),
        (128 * MIB + 1, "g4-highcpu-256M"),
        (300 * MIB, "g4-highcpu-512M"),
        (GIB, "g4-highcpu-1G"),
        (GIB + 1, "g4-highcpu-2G"),
        (3 * GIB, "g4-highcpu-4G"),
        (16 * GIB, "g4-highcpu-16G"),
    ],
)
def test_memory_picks_the_smallest_package_that_fits(memory, name):
    assert select_package(DEFAULT_PACKAGES, {}, memory).name == name


def test_order_of_the_list_does_not_matter_and_ties_go_to_the_first():
    reordered = tuple(reversed(DEFAULT_PACKAGES))
    assert select_package(reordered, {}, 300 * MIB).name == "g4-highcpu-512M"
    twins = (
        Package("first", str(uuid.uuid4()), 512, 1024, 512, 0, 1, 0),
        Package("second", str(uuid.uuid4()), 512, 1024, 512, 0, 1, 0),
    )
    assert select_package(twins, {}, 100 * MIB).name == "first"


def test_nothing_fits_is_422_in_sdcs_words():
    with pytest.raises(Unprocessable) as info:
        select_package(DEFAULT_PACKAGES, {}, 32 * GIB)
    assert info.value.message == ("no package supports the given container constraints: memory=32g")
    assert status_of(info.value) == 422


def test_default_memory_that_does_not_fit_is_422_too():
    small = (by_name("g4-highcpu-128M"),)
    with pytest.raises(Unprocessable, match=r"constraints: memory=1g$"):
        select_package(small, {}, 0)


def test_negative_memory_is_400():
    with pytest.raises(InvalidArgument):
        select_package(DEFAULT_PACKAGES, {}, -1)


@pytest.mark.parametrize("how", ["name", "uuid", "short", "upper uuid"])
def test_label_picks_exactly_and_overrides_memory(how):
    chosen = by_name("g4-highcpu-256M")
    value = {
        "name": chosen.name,
        "uuid": chosen.uuid,
        "short": chosen.uuid[:8],
        "upper uuid": chosen.uuid.upper(),
    }[how]
    labels = {packages.PACKAGE_LABEL: value, "other": "x"}
    assert select_package(DEFAULT_PACKAGES, labels, 8 * GIB) == chosen
    assert select_package(DEFAULT_PACKAGES, labels, 0) == chosen


def test_label_may_pick_a_package_smaller_or_larger_than_memory_would():
    labels = {packages.PACKAGE_LABEL: "g4-highcpu-16G"}
    assert select_package(DEFAULT_PACKAGES, labels, 1).memory == 16384


def test_a_name_wins_over_a_short_uuid():
    other = Package("target", str(uuid.uuid4()), 256, 512, 256, 0, 1, 0)
    prefix = other.short_uuid
    named = Package(prefix, str(uuid.uuid4()), 512, 1024, 512, 0, 1, 0)
    assert select_package((other, named), {packages.PACKAGE_LABEL: prefix}, 0) == named


def test_an_ambiguous_short_uuid_picks_nothing():
    a = Package("a", "abcdef01-0000-4000-8000-000000000001", 256, 512, 256, 0, 1, 0)
    b = Package("b", "abcdef01-0000-4000-8000-000000000002", 512, 1024, 512, 0, 1, 0)
    with pytest.raises(Unprocessable, match=r"com\.joyent\.package=abcdef01"):
        select_package((a, b), {packages.PACKAGE_LABEL: "abcdef01"}, 0)


def test_unknown_label_value_is_422_naming_it():
    with pytest.raises(Unprocessable) as info:
        select_package(DEFAULT_PACKAGES, {packages.PACKAGE_LABEL: "g4-highcpu-3G"}, 0)
    assert info.value.message == (
        "no package supports the given container constraints: com.joyent.package=g4-highcpu-3G"
    )


@pytest.mark.parametrize("value", ["", "-x", "a..b", "bad name", "x" + "/y"])
def test_malformed_label_value_is_400_naming_it(value):
    with pytest.raises(InvalidArgument) as info:
        select_package(DEFAULT_PACKAGES, {packages.PACKAGE_LABEL: value}, 0)
    assert info.value.message == f"invalid value for com.joyent.package: {value}"
    assert status_of(info.value) == 400


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0b"), (1, "1b"), (1023, "1023b"), (1024, "1k"), (MIB, "1m"), (1536 * MIB, "1g"),
     (65 * GIB, "65g"), (2 * 1024 * GIB, "2t")],
)  # fmt: skip
def test_human_size_as_sdc_printed_it(size, text):
    assert packages.human_size(size) == text
