"""Datasets: on-disk formats -> parquet manifests -> the VehicleNet merge.

* ``schema``: the manifest columns (``MANIFEST_SCHEMA``), ``write_manifest`` / ``read_manifest`` /
  ``read_manifest_metadata`` / ``manifest_stats``
* one reader per format: ``veri776.read_veri776``, ``cityflow.read_cityflow``,
  ``vehicleid.read_vehicleid`` (+ ``vehicleid_draws``), ``veriwild.read_veriwild``,
  ``compcars.read_compcars``
* ``vehiclenet.build_vehiclenet``: Stage-I / Stage-II training manifests, validation and test splits
* ``synth.synthesize``: small synthetic datasets in all five layouts, for the demo and tests
* ``check.check_images``: decode every image of a manifest in parallel
* ``cli``: ``vreid data synth | index | vehiclenet | stats | check``

Nothing is imported here so that ``vreid --help`` stays fast; import the submodules.
"""
