"""Consistent hashing (ring_hash, maglev) and the key hash: stickiness, spread by weight, minimal reshuffling."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmesh._core.balance.factory import HASHING, make_balancer
from fastmesh._core.balance.hashing import hash_key, mix_key
from fastmesh._core.balance.maglev import MaglevBalancer, is_prime
from fastmesh._core.balance.ring_hash import RingHashBalancer

NAMES = sorted(HASHING)
SEED = 20240601
MASK = (1 << 64) - 1
ADDRESSES = [f"10.0.0.{i + 1}:8080".encode() for i in range(10)]
IDS = [hash_key(a) for a in ADDRESSES]
KEYS = [hash_key(b"session-%d" % k) for k in range(100_000)]


def reference_hash(data: bytes) -> int:
    # The documented construction, written out independently: FNV-1a 64, then SplitMix64's finalizer.
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & MASK
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & MASK
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & MASK
    return h ^ (h >> 31)


def build(name, weights=None, ids=None, **options):
    weights = weights if weights is not None else [1] * 10
    ids = ids if ids is not None else IDS[:len(weights)]
    return make_balancer(name, weights, seed=SEED, ids=ids, **options)


def mapping(b, keys=KEYS):
    return [b.pick_hashed(k) for k in keys]


# ---- the key hash ----

@pytest.mark.parametrize("data", [b"", b"a", b"10.0.0.1:8080", bytes(range(256)), b"x" * 1000])
def test_hash_key_matches_its_documented_construction(data):
    assert hash_key(data) == reference_hash(data)
    assert hash_key(bytearray(data)) == hash_key(memoryview(data)) == hash_key(data)


def test_hash_key_spreads_similar_inputs():
    hashes = {hash_key(b"user-%d" % k) for k in range(10_000)}
    assert len(hashes) == 10_000
    assert all(0 <= h <= MASK for h in hashes)
    # Each output bit is set for about half of the inputs, even though the inputs differ in a few bits.
    for bit in range(64):
        ones = sum((h >> bit) & 1 for h in hashes)
        assert 4_600 < ones < 5_400, bit


def test_mix_key_is_a_bijection_sample():
    assert len({mix_key(k) for k in range(100_000)}) == 100_000
    assert mix_key(0) == 0   # SplitMix64's finalizer fixes 0; the balancers only ever see keys through it


# ---- stickiness and spread ----

@pytest.mark.parametrize("name", NAMES)
def test_same_key_same_endpoint(name):
    a = build(name)
    b = make_balancer(name, [1] * 10, seed=SEED + 1, ids=IDS)   # another seed: keyed picks do not draw
    keys = KEYS[:5_000]
    first = mapping(a, keys)
    assert mapping(a, keys) == first
    assert mapping(b, keys) == first
    assert len(set(first)) == 10


@pytest.mark.parametrize("name, tolerance", [("ring_hash", 0.25), ("maglev", 0.05)])
def test_keys_spread_by_weight(name, tolerance):
    weights = [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    b = build(name, weights)
    seen = [0] * 10
    for i in mapping(b):
        seen[i] += 1
    total = sum(weights)
    for i, w in enumerate(weights):
        want = len(KEYS) * w / total
        assert abs(seen[i] - want) < tolerance * want, (i, seen)


def test_ring_points_follow_weights():
    b = build("ring_hash", [1, 2, 3], vnodes=100)
    assert b.point_counts() == [100, 200, 300]
    assert b.ring_size == 600


def test_ring_is_capped():
    b = build("ring_hash", [1000, 3000], vnodes=160, max_ring=4_000)
    assert b.point_counts() == [1_000, 3_000]
    assert build("ring_hash", [1] * 5, max_ring=5).point_counts() == [1] * 5


def test_maglev_slots_follow_weights():
    b = build("maglev", [1, 2, 3, 4], table_size=10_007)
    counts = b.slot_counts()
    assert sum(counts) == 10_007 == b.table_slots
    for got, w in zip(counts, (1, 2, 3, 4)):
        assert abs(got - 10_007 * w / 10) <= 4, counts


# ---- minimal reshuffling ----

def kept(before, after, removed):
    # Share of the keys not on `removed` that still map to the same endpoint (after maps survivors' new indexes).
    stay = [(x, y) for x, y in zip(before, after) if x != removed]
    return sum(1 for x, y in stay if x == y) / len(stay)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("removed", [0, 4, 9])
def test_marking_an_endpoint_down_moves_only_its_keys(name, removed):
    b = build(name, [1, 2, 3, 1, 2, 3, 1, 2, 3, 1])
    before = mapping(b)
    b.mark_down(removed)
    after = mapping(b)
    assert removed not in after
    assert kept(before, after, removed) == 1.0
    # Its keys fail over to many endpoints, not one.
    assert len({y for x, y in zip(before, after) if x == removed}) >= 5
    b.mark_up(removed)
    assert mapping(b) == before


@pytest.mark.parametrize("name, floor", [("ring_hash", 1.0), ("maglev", 0.9)])
@pytest.mark.parametrize("removed", [0, 4, 9])
def test_rebuilding_without_an_endpoint_keeps_the_others(name, floor, removed):
    weights = [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
    before = mapping(build(name, weights))
    rest = [i for i in range(10) if i != removed]
    smaller = build(name, [weights[i] for i in rest], [IDS[i] for i in rest])
    # Translate the smaller balancer's indexes back to the original ones.
    after = [rest[j] for j in mapping(smaller)]
    assert kept(before, after, removed) >= floor


@pytest.mark.parametrize("name", NAMES)
def test_rebuilding_with_an_extra_endpoint_moves_keys_only_to_it(name):
    before = mapping(build(name, [1] * 9, IDS[:9]))
    after = mapping(build(name, [1] * 10, IDS))
    moved = [(x, y) for x, y in zip(before, after) if x != y]
    assert len(moved) / len(KEYS) < 0.16
    if name == "ring_hash":
        assert {y for _, y in moved} == {9}
    else:
        assert sum(1 for _, y in moved if y == 9) / len(moved) > 0.85


def test_without_ids_a_rebuilt_ring_reshuffles():
    # Why ids matter: by default identity is the index, so dropping endpoint 0 renames every other one.
    before = mapping(make_balancer("ring_hash", [1] * 10, seed=SEED), KEYS[:20_000])
    after = [j + 1 for j in mapping(make_balancer("ring_hash", [1] * 9, seed=SEED), KEYS[:20_000])]
    assert kept(before, after, 0) < 0.5


# ---- failover: avoid and down ----

@pytest.mark.parametrize("name", NAMES)
def test_avoid_fails_over_like_a_down_endpoint(name):
    b = build(name)
    keys = KEYS[:3_000]
    first = mapping(b, keys)
    second = [b.pick_hashed(k, avoid=i) for k, i in zip(keys, first)]
    assert all(x != y for x, y in zip(first, second))
    assert [b.pick_hashed(k, avoid=i) for k, i in zip(keys, first)] == second
    # The retry of a key goes where the key would go with its first endpoint down.
    for owner in range(10):
        b.mark_down(owner)
        for k, x, y in zip(keys, first, second):
            if x == owner:
                assert b.pick_hashed(k) == y
        b.mark_up(owner)


@pytest.mark.parametrize("name", NAMES)
def test_avoid_and_down_edge_cases(name):
    b = build(name, [1, 1, 1])
    key = KEYS[7]
    owner = b.pick_hashed(key)
    for i in range(3):
        if i != owner:
            b.mark_down(i)
    assert b.pick_hashed(key, avoid=owner) == owner   # the only one up
    b.mark_down(owner)
    assert b.pick_hashed(key) == -1
    assert b.pick_hashed(key, avoid=owner) == -1
    assert b.pick_endpoint() == -1


@pytest.mark.parametrize("name", NAMES)
def test_most_endpoints_down(name):
    b = build(name, [1] * 10)
    for i in range(9):
        b.mark_down(i)
    assert set(mapping(b, KEYS[:2_000])) == {9}
    assert {b.pick_hashed(k, avoid=9) for k in KEYS[:200]} == {9}


@pytest.mark.parametrize("name", NAMES)
def test_unkeyed_picks_spread_by_weight(name):
    b = build(name, [1, 3])
    seen = [0, 0]
    for _ in range(20_000):
        seen[b.pick_endpoint()] += 1
    assert 4_000 < seen[0] < 6_000, seen


def test_keys_are_taken_modulo_2_64():
    b = build("maglev")
    assert b.pick_hashed(-1) == b.pick_hashed(MASK)
    assert b.pick_hashed(1 << 64) == b.pick_hashed(0)


def test_non_hashing_balancers_ignore_the_key():
    for name in ("round_robin", "least_request", "random", "ewma"):
        b = make_balancer(name, [1, 1, 1], seed=SEED)
        assert {b.pick_hashed(42) for _ in range(300)} == {0, 1, 2}, name


# ---- construction ----

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ids, error", [
    ([1, 2], ValueError), ([1, 1, 2], ValueError), ([-1, 2, 3], ValueError), ([1 << 64, 2, 3], ValueError),
    ([1, 2, "3"], ValueError), ([True, 2, 3], ValueError),
])
def test_bad_ids_rejected(name, ids, error):
    with pytest.raises(error):
        make_balancer(name, [1, 1, 1], ids=ids)


@pytest.mark.parametrize("size", [65536, 1, 0, 9, 5_000_077])
def test_maglev_table_size_must_be_a_prime_in_range(size):
    with pytest.raises(ValueError):
        MaglevBalancer([1, 1], table_size=size)


def test_maglev_needs_a_slot_per_endpoint():
    with pytest.raises(ValueError):
        MaglevBalancer([1] * 8, table_size=7)
    b = MaglevBalancer([1] * 7, table_size=7)
    assert sorted(b.slot_counts()) == [1] * 7


def test_is_prime():
    assert [m for m in range(30) if is_prime(m)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert is_prime(65537) and is_prime(5_000_011) and not is_prime(65535)


@pytest.mark.parametrize("option", [{"vnodes": 0}, {"max_ring": 2}, {"max_ring": 1 << 27}])
def test_bad_ring_options_rejected(option):
    with pytest.raises(ValueError):
        RingHashBalancer([1, 1, 1], **option)


def test_unknown_option_rejected():
    with pytest.raises(TypeError):
        RingHashBalancer([1, 1], table_size=7)
    with pytest.raises(TypeError):
        MaglevBalancer([1, 1], vnodes=7)


@pytest.mark.parametrize("name", NAMES)
def test_ids_are_kept(name):
    assert build(name).endpoint_ids() == IDS
    assert make_balancer(name, [1, 1, 1]).endpoint_ids() == [0, 1, 2]


# ---- any state, any key ----

@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=150, deadline=None)
@given(weights=st.lists(st.integers(1, 9), min_size=1, max_size=8),
       down=st.sets(st.integers(0, 7)), keys=st.lists(st.integers(0, MASK), min_size=1, max_size=20),
       avoid=st.integers(-2, 8))
def test_any_state_keeps_the_rules(name, weights, down, keys, avoid):
    n = len(weights)
    b = make_balancer(name, weights, seed=SEED, ids=[mix_key(i + 1) for i in range(n)],
                      **({"table_size": 211} if name == "maglev" else {"vnodes": 20}))
    for i in down:
        if i < n:
            b.mark_down(i)
    ups = [i for i in range(n) if i not in down]
    for key in keys:
        got = b.pick_hashed(key, avoid)
        assert b.pick_hashed(key, avoid) == got
        if not ups:
            assert got == -1
        elif ups == [avoid]:
            assert got == avoid
        else:
            assert got in ups and got != avoid
