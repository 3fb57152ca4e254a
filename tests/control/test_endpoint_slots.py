"""Endpoint slots (dataplane/slots.py): the supervisor's assignment keeps an endpoint's index for its life, leaves
holes for removed ones, compacts when holes outnumber live endpoints; the holes travel in the effective config
and a worker started from it indexes its endpoints as the running workers do."""
import dataclasses
import json

import pytest

from fastmesh.config.load import config_to_dict, loads_config
from fastmesh.config.schema import Endpoint
from fastmesh.dataplane.slots import COMPACT_AT, holes_of, live, next_slots, slot_list, split_holes, with_holes
from fastmesh.dataplane.stats import StatsLayout


def ep(port, weight=1, host="127.0.0.1"):
    return Endpoint(host, port, weight)


def test_kept_endpoints_keep_their_slot_removed_ones_leave_a_hole_new_ones_are_appended():
    slots = next_slots(None, [ep(1), ep(2), ep(3)])
    assert slots == [ep(1), ep(2), ep(3)]
    slots = next_slots(slots, [ep(4), ep(3), ep(1, weight=5)])
    assert slots == [ep(1, weight=5), None, ep(3), ep(4)]       # weight as listed now, slot as before
    slots = next_slots(slots, [ep(2), ep(4)])                   # 2 comes back: a new slot, the hole stays
    assert slots == [None, None, None, ep(4), ep(2)]
    assert holes_of(slots) == (0, 1, 2) and live(slots) == [ep(4), ep(2)]


def test_discovery_spells_each_address_one_way():
    # Slots are matched by (host, port): sources hand over canonical IP spellings.
    from fastmesh.discovery.base import parse_endpoint
    spelled = parse_endpoint("[0:0:0:0:0:0:0:1]:80", "x")
    assert spelled == parse_endpoint({"address": "[::1]:80"}, "x") == Endpoint("::1", 80)


def test_compaction_once_holes_outnumber_live_endpoints():
    first = [ep(p) for p in range(COMPACT_AT)]
    slots = next_slots(None, first)
    slots = next_slots(slots, [ep(p) for p in range(COMPACT_AT, 2 * COMPACT_AT)])
    assert len(slots) == 2 * COMPACT_AT and holes_of(slots) == tuple(range(COMPACT_AT))   # equal: no compaction
    slots = next_slots(slots, [ep(1000)])
    assert slots == [ep(1000)]                                  # 2 * COMPACT_AT holes, 1 live: start afresh
    small = next_slots(next_slots(None, [ep(1), ep(2), ep(3)]), [ep(3)])
    assert small == [None, None, ep(3)]                         # few holes: never compacted


def test_holes_travel_as_nulls_in_the_effective_config():
    cfg = loads_config('[[listeners]]\nname = "l"\nlisten = "127.0.0.1:1"\ncluster = "c"\n'
                       '[clusters.c]\nendpoints = ["127.0.0.1:7", "127.0.0.1:8"]\n')
    data = with_holes(config_to_dict(cfg), {"c": (0, 2)})
    listed = [e and e["address"] for e in data["clusters"]["c"]["endpoints"]]
    assert listed == [None, "127.0.0.1:7", None, "127.0.0.1:8"]
    back = json.loads(json.dumps(data))
    assert split_holes(back) == {"c": (0, 2)}
    assert back == config_to_dict(cfg)
    assert slot_list(cfg.clusters["c"].endpoints, (0, 2)) == [None, ep(7), None, ep(8)]
    layout = StatsLayout(cfg, {"c": (0, 2)})
    assert layout.clusters["c"].endpoints == ("", "127.0.0.1:7", "", "127.0.0.1:8")
    assert layout.key != StatsLayout(cfg).key


def test_endpoint_sets_travel_by_columns_and_come_back_as_sent():
    from fastmesh.dataplane.slots import decode_sets, encode_sets
    mixed = [Endpoint("127.0.0.1", 7, 3, 0), Endpoint("::1", 8, 1, 2), Endpoint("10.1.2.3", 9, 1, 0)]
    uniform = [ep(p) for p in range(1, 5)]
    sets = {"mixed": (mixed, (0, 4)), "uniform": (uniform, ()), "empty": ([], (0, 1, 2))}
    payload = encode_sets(sets)
    wire = json.loads(payload)["clusters"]
    assert wire["uniform"]["weights"] == 1 and wire["uniform"]["priorities"] == 0   # one number for all
    assert isinstance(wire["mixed"]["weights"], str) and wire["mixed"]["hosts"] == "127.0.0.1 ::1 10.1.2.3"
    assert wire["mixed"]["holes"] == [[0, 1], [4, 1]] and wire["empty"]["holes"] == [[0, 3]]
    back = decode_sets(payload)
    assert back == {"mixed": (mixed, (0, 4)), "uniform": (uniform, ()), "empty": ([], (0, 1, 2))}
    # Made without Endpoint's __init__ (slots.endpoints_of), yet whole Endpoints: same type, fields, hash, frozen.
    for made, sent in zip(back["mixed"][0], mixed):
        assert type(made) is Endpoint and vars(made) == vars(sent) and hash(made) == hash(sent)
        assert made.address == sent.address
        with pytest.raises(dataclasses.FrozenInstanceError):
            made.port = 1       # type: ignore[misc]


def test_endpoints_made_in_bulk_are_left_to_reference_counting():
    # The compiled loops (a worker's decode, the supervisor's file parse) make 10,000 Endpoints an update: they
    # hold no other object, so they stay out of the cyclic collector's lists, and are freed once unreferenced.
    import gc
    import weakref
    from fastmesh.dataplane.slots import decode_sets, encode_sets
    from fastmesh.discovery.base import parse_endpoints
    parsed = parse_endpoints(["10.0.0.1:80", {"address": "10.0.0.2:81", "weight": 3}], "x.json")
    decoded = decode_sets(encode_sets({"c": (parsed, ())}))["c"][0]
    assert decoded == parsed == [Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 81, 3)]
    assert not any(gc.is_tracked(e) for e in parsed + decoded) and gc.is_tracked(Endpoint("10.0.0.1", 80))
    gc.disable()
    try:
        gone = [weakref.ref(e) for e in parsed + decoded]
        del parsed, decoded
        assert all(ref() is None for ref in gone)
    finally:
        gc.enable()


def test_endpoint_payload_edges_round_trip():
    # The limits of each 16-bit column, IPv6 in several forms, holes before, between and after the live
    # endpoints, a set emptied, a cluster with nothing at all, and 10,000 endpoints with one run of holes.
    from fastmesh.dataplane.slots import decode_sets, encode_sets
    edges = [Endpoint("0.0.0.0", 1, 1, 0), Endpoint("255.255.255.255", 65535, 1000, 65535),
             Endpoint("2001:db8::1", 443, 2, 1), Endpoint("fe80::1%eth0", 80, 999, 3), Endpoint("::", 8080, 7, 0)]
    big = [Endpoint(f"10.{i // 250}.{i % 250}.1", 1024 + i, 1 + i % 3, 0) for i in range(10_000)]
    sets = {"edges": (edges, (0, 1, 3, 4, 5, 11, 12)), "gone": ([], (0, 1)), "none": ([], ()),
            "big": (big, tuple(range(10_000))), "same-weight": ([Endpoint("10.0.0.1", 1, 5, 9)], (1,))}
    assert decode_sets(encode_sets(sets)) == sets


def test_endpoint_payload_that_does_not_add_up_is_refused():
    from fastmesh.dataplane.slots import decode_sets, encode_sets
    payload = json.loads(encode_sets({"c": ([ep(1), ep(2)], ())}))
    payload["clusters"]["c"]["hosts"] = "127.0.0.1"                 # one host for two ports
    with pytest.raises(ValueError, match="columns of 1, 2, 2 and 2 entries for 2 endpoints"):
        decode_sets(json.dumps(payload).encode())
    payload["format"] = 1
    with pytest.raises(ValueError, match="format 1, expected 2"):
        decode_sets(json.dumps(payload).encode())


def test_hole_runs():
    from fastmesh.dataplane.slots import hole_runs
    assert hole_runs(()) == []
    assert hole_runs((5,)) == [(5, 1)]
    assert hole_runs((0, 1, 2, 7, 8, 10)) == [(0, 3), (7, 2), (10, 1)]
    assert hole_runs(range(10_000)) == [(0, 10_000)]


def test_canonical_ip_takes_canonical_ipv4_as_is_and_spells_the_rest_one_way():
    import pytest
    from fastmesh.discovery.base import SourceError, canonical_ip, parse_endpoint
    assert canonical_ip("10.0.0.1") == "10.0.0.1" and canonical_ip("255.255.255.255") == "255.255.255.255"
    assert canonical_ip("0:0:0:0:0:0:0:1") == "::1" and canonical_ip("::FFFF:10.0.0.1") == "::ffff:a00:1"
    for bad in ("010.0.0.1", "256.0.0.1", "10.0.0", "localhost"):
        with pytest.raises(ValueError):
            canonical_ip(bad)
        with pytest.raises(SourceError):
            parse_endpoint(f"{bad}:80", "x")


def test_one_update_rebuilds_a_compacted_cluster_and_updates_the_other_in_place():
    import asyncio

    from fastmesh._testbase.net import free_ports
    from fastmesh.proxy import Proxy
    web = free_ports(1)[0]
    toml = (f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{web}"\nprotocol = "http"\ncluster = "a"\n'
            '[[listeners.routes]]\npath_prefix = "/b"\ncluster = "b"\n'
            '[clusters.a]\nendpoints = ["127.0.0.1:1", "127.0.0.1:2"]\n'
            '[clusters.b]\nbalancer = "ring_hash"\nendpoints = ["127.0.0.1:3", "127.0.0.1:4"]\n')

    async def main() -> None:
        async with Proxy.from_toml(toml) as proxy:
            a, b = proxy._clusters["a"], proxy._clusters["b"]
            changes = await proxy.update_endpoints({"a": ([ep(5)], ()),                      # compacted: new slots
                                                    "b": ([ep(4), ep(6)], (0,))})            # extends its slots
            assert proxy._clusters["a"] is not a and proxy._clusters["b"] is b
            assert changes["clusters"] == ["a"] and changes["clusters_updated"] == ["b"]
            assert [e["address"] for e in proxy._clusters["a"].endpoints()] == ["127.0.0.1:5"]
            assert b.slots == 3 and b.live_count == 2
            assert proxy._stats_layout.clusters["b"].endpoints == ("", "127.0.0.1:4", "127.0.0.1:6")
    asyncio.run(main())
