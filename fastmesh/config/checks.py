"""Checks across sections, run once the whole Config is built: names, addresses and settings that must agree."""
from __future__ import annotations

from fastmesh.config import naming as naming_rules
from fastmesh.config.schema import Config
from fastmesh.config.values import format_address, format_duration, _same_address
from fastmesh.config.walk import _Check


def _check_services(check: _Check, config: Config) -> None:
    """Without a watched source the table is the config's: a route's service it sends nowhere is a mistake."""
    if config.naming.source is not None:
        return
    rules = naming_rules.parse_table(config.naming.rules, "naming.rules")
    clusters = list(config.clusters)
    for i, lst in enumerate(config.listeners):
        named = [(f"listeners[{i}].routes[{j}].service", r.service) for j, r in enumerate(lst.routes)]
        for key, service in [*named, (f"listeners[{i}].service", lst.service)]:
            if service is None:
                continue
            name = naming_rules.service_name(service)
            if naming_rules.names_nothing(naming_rules.resolve(rules, name, clusters, config.cluster_templates)):
                check.bad(key, f"a name naming.rules resolve to a cluster (they send {name} to none)", service)


def _check_ticket_rotations(check: _Check, config: Config) -> None:
    """A ticket key is derived from the master secret of the generation its period starts in, and a worker keeps
    the last three generations: a period longer than a generation would need secrets already wiped."""
    if config.ticket_secret_rotation < 1.0:
        check.bad("ticket_secret_rotation", 'a duration of at least "1s"',
                  format_duration(config.ticket_secret_rotation))
        return
    for i, lst in enumerate(config.listeners):
        if lst.tls is not None and lst.tls.ticket_rotation > config.ticket_secret_rotation:
            check.bad(f"listeners[{i}].tls.ticket_rotation",
                      f'at most ticket_secret_rotation ("{format_duration(config.ticket_secret_rotation)}")',
                      format_duration(lst.tls.ticket_rotation))


def _check_bound_addresses(check: _Check, config: Config) -> None:
    """Everything fastmesh binds (admin, listeners, demo backends) needs its own address.

    Only equal addresses are reported: a wildcard next to a specific address on one port can be intended,
    and whether it binds depends on the socket options the listener uses.
    """
    bound = [("admin.listen", config.admin.host, config.admin.port)]
    bound += [(f"listeners[{i}].listen", lst.host, lst.port) for i, lst in enumerate(config.listeners)]
    if config.demo is not None:
        bound += [(f"demo.backends[{i}]", e.host, e.port) for i, e in enumerate(config.demo.backends)]
    owner: dict[tuple[str, int], str] = {}
    for key, host, port in bound:
        first = owner.setdefault(_same_address(host, port), key)
        if first != key:
            check.bad(key, f"an address not used by {first}", format_address(host, port))
