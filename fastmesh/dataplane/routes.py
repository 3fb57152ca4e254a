"""Compile an http listener's route config into the core Router; its default cluster (or service) becomes a last
catch-all."""
from __future__ import annotations

import dataclasses
from typing import Any

from fastmesh._core.naming import Names
from fastmesh._core.ratelimit import RateBlock
from fastmesh._core.router import SPEC_KEYS, Router
from fastmesh.config.schema import Listener as ListenerConfig
from fastmesh.config.schema import Route as RouteConfig
from fastmesh.dataplane.ratelimits import limits_for


def route_spec(route: RouteConfig) -> dict[str, Any]:
    """A Route as the plain dict Router takes (the core never imports the config layer); its filters are wired
    beside the router (dataplane/filters.py)."""
    return {f.name: getattr(route, f.name) for f in dataclasses.fields(route) if f.name in SPEC_KEYS}


def build_router(listener: ListenerConfig, clusters: list[str], names: Names | None = None,
                 rates: RateBlock | None = None) -> Router:
    """The listener's routes in order, then {cluster: default} when it has a default cluster ({service: ...} when
    its default is a logical name).

    `clusters` fixes the cluster indexes: Router.cluster(route) is a position in this list. Routes sent to a
    service resolve it with `names` (dataplane/naming.py), whose table fixes the service indexes.
    """
    specs = [route_spec(route) for route in listener.routes]
    if listener.cluster is not None:
        specs.append({"cluster": listener.cluster})
    elif listener.service is not None:
        specs.append({"service": listener.service})
    table = names.current if names is not None else None
    services = table.services if table is not None else ()
    router = Router(specs, clusters, services, names, trust_naming=listener.trust_naming)
    router.limits = limits_for(rates, listener)       # each limited route's buckets in `rates` (ratelimits.py)
    return router
