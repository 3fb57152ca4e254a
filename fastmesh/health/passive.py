"""Passive outlier ejection: hands a cluster's `outlier` config to the core Cluster, which does the counting.

The mechanism lives in fastmesh/_core/cluster.pyx (request_succeeded / request_failed / connect outcomes), so
nothing here runs per request; this is only the wiring of the settings.
"""
from __future__ import annotations

from typing import Any

from fastmesh.config.schema import Outlier


def configure_outlier(cluster: Any, outlier: Outlier | None) -> None:
    """Apply `outlier` (None: off) to a core Cluster."""
    if outlier is None:
        cluster.set_outlier(False)
        return
    sr = outlier.success_rate
    cluster.set_outlier(
        True,
        consecutive_failures=outlier.consecutive_failures,
        base_ejection=outlier.base_ejection,
        max_ejection=outlier.max_ejection,
        max_ejected_percent=outlier.max_ejected_percent,
        success_rate_window=sr.window if sr is not None else 0.0,
        success_rate_minimum=sr.minimum_requests if sr is not None else 1,
        success_rate_threshold=sr.threshold if sr is not None else 0.5,
    )
