"""Which endpoints are healthy: outlier settings for the core (passive.py) and active checks (active.py)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastmesh.config.schema import Cluster as ClusterConfig
from fastmesh.health.active import ActiveChecks
from fastmesh.health.passive import configure_outlier

__all__ = ["Health", "ActiveChecks", "configure_outlier"]


class Health:
    """One Proxy's health machinery: the outlier settings of every cluster, then the active checkers.

    Proxy calls start() once the reactor is attached to the running loop (before listeners accept), and
    stop() before detaching it.
    """

    def __init__(self, configs: Mapping[str, ClusterConfig], clusters: Mapping[str, Any]) -> None:
        self.configs = configs
        self.clusters = clusters
        self.active = ActiveChecks(configs, clusters)

    def start(self) -> None:
        for name, cluster in self.clusters.items():
            configure_outlier(cluster, self.configs[name].outlier)
        self.active.start()

    def update_cluster(self, name: str, cfg: ClusterConfig, cluster: Any) -> None:
        """Cluster `name` changed its endpoint set in place: active checks follow (outlier settings are kept)."""
        self.active.update_cluster(name, cfg, cluster)

    async def stop(self) -> None:
        await self.active.stop()
