"""The session-ticket master secret ratchets: keys of a period come from the secret of the generation it starts
in, the supervisor's ratchet (Python, no OpenSSL) matches the core's, and a wiped generation's keys match nothing."""
from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterator

import pytest

from fastmesh._core.tls import context
from fastmesh.dataplane.tls import TicketSecret, ratchet, set_ticket_secret


@pytest.fixture(autouse=True)
def own_secret() -> Iterator[None]:
    yield
    context.set_ticket_secret(os.urandom(32), handed=False)      # as an embedded Proxy starts


def expected_name(secret: bytes, epoch: int, period: int) -> bytes:
    """A ticket key's name as the core derives it: the period in clear, then 8 bytes of HMAC(secret, ...)."""
    msg = epoch.to_bytes(8, "little") + period.to_bytes(8, "little") + b"\0"
    return epoch.to_bytes(8, "little") + hmac.new(secret, msg, hashlib.sha256).digest()[:8]


def test_the_python_ratchet_is_the_core_ratchet() -> None:
    secret = os.urandom(32)
    assert context.ratchet(secret, 10, 13) == ratchet(ratchet(ratchet(secret, 11), 12), 13)
    assert ratchet(secret, 11) != secret


def test_period_keys_come_from_their_generation_and_wiped_generations_match_nothing() -> None:
    """rotation 10 s, period 5 s: periods 200, 201 start in generation 100, period 202 in 101 (a new secret)."""
    secret = os.urandom(32)
    context.set_ticket_secret(secret, 100, 10.0)
    g101 = ratchet(secret, 101)
    assert context.ticket_key_name(200, 5) == expected_name(secret, 200, 5)
    assert context.ticket_key_name(201, 5) == expected_name(secret, 201, 5)
    assert context.ticket_key_name(202, 5) == expected_name(g101, 202, 5)
    assert context.ticket_key_name(202, 5) != expected_name(secret, 202, 5)    # the secret itself moved on
    assert context.ticket_secret_state() == (10.0, 101, 2, True)
    # Five generations later only the newest four are held: generation 100's periods get keys nothing matches.
    g105 = ratchet(ratchet(ratchet(ratchet(g101, 102), 103), 104), 105)
    assert context.ticket_key_name(210, 5) == expected_name(g105, 210, 5)
    assert context.ticket_secret_state() == (10.0, 105, 4, True)
    assert context.ticket_key_name(204, 5) == expected_name(ratchet(g101, 102), 204, 5)
    assert context.ticket_key_name(200, 5)[:8] == b"\xff" * 8
    assert context.ticket_key_name(200, 5) != context.ticket_key_name(200, 5)     # random each time


def test_the_supervisor_hands_over_a_secret_two_generations_behind_the_clock() -> None:
    keeper = TicketSecret(10.0, now=1000.0)
    first = keeper.handover(now=1000.0)
    secret, generation, rotation = struct.unpack("<32sqd", first)
    assert (generation, rotation) == (98, 10.0)
    later = keeper.handover(now=1031.0)
    assert struct.unpack("<32sqd", later) == (ratchet(ratchet(ratchet(secret, 99), 100), 101), 101, 10.0)
    assert keeper.handover(now=1005.0) == later                  # never backwards
    set_ticket_secret(later)
    assert context.ticket_secret_state() == (10.0, 101, 1, True)
    handed = struct.unpack("<32sqd", later)[0]
    assert context.ticket_key_name(205, 5) == expected_name(ratchet(handed, 102), 205, 5)     # 1025 s: generation 102
