"""Small glue for the Python API (``import vreid``): one call per dataset protocol."""

from __future__ import annotations

from typing import Any


def evaluate_protocol(name: str, qf, gf, q_df, g_df, **kw: Any) -> list[dict]:
    """The table rows of dataset protocol ``name`` (``veri776``, ``cityflow``, ``veriwild``) for query and
    gallery features ``qf`` / ``gf`` of manifests ``q_df`` / ``g_df`` (see :mod:`vreid.evaluate.protocols`
    for each protocol's junk rule). VehicleID draws its own galleries: call
    ``vreid.evaluate.protocols.vehicleid(features, df)``. Print the rows with
    ``vreid.evaluate.protocols.format_rows(rows)``."""
    from vreid.errors import VreidError
    from vreid.evaluate import protocols

    runners = {"veri776": protocols.veri776, "cityflow": protocols.cityflow, "veriwild": protocols.veriwild}
    if name not in runners:
        raise VreidError(f"protocol {name!r}: expected one of {sorted(runners)} (VehicleID: protocols.vehicleid)")
    return runners[name](qf, gf, q_df, g_df, **kw)
