"""Endpoint slots (dataplane/slots.py): the supervisor's assignment keeps an endpoint's index for its life, leaves
holes for removed ones, compacts when holes outnumber live endpoints; the holes travel in the effective config
and a worker started from it indexes its endpoints as the running workers do."""
import json

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
