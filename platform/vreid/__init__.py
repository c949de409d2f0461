"""vreid: a Ray-distributed experiment and ensemble platform for vehicle re-identification.

The package follows the pipeline a user runs: ``data`` (on-disk formats -> parquet manifests),
``models`` / ``losses`` / ``train`` (VehicleNet Stage-I/II and SSBVER recipes), ``evaluate``
(features, metrics, protocols, re-ranking, post-processing), ``ensemble`` (fusion and the AI City
submission), with Ray (``distributed``) and MLflow (``tracking``) at the edges.
"""

__version__ = "0.1.0"
