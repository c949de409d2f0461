"""ray_cluster.yaml is a real cluster-launcher config: the shipped schema and Ray's own validation accept it."""

import copy
import json
import os

import yaml

from conftest import REPO


def _config():
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def test_cluster_yaml_matches_ray_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json"))).read())
    jsonschema.validate(_config(), schema)


def test_cluster_yaml_passes_ray_validation_and_has_gpu_workers():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _config()
    full = prepare_config(copy.deepcopy(cfg))
    validate_config(full)
    head = full["available_node_types"][full["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_types = [t for t in full["available_node_types"].values() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types and all(isinstance(t["resources"]["GPU"], int) for t in gpu_types)
    assert all(t["max_workers"] >= t.get("min_workers", 0) for t in gpu_types)
    setup = " ".join(full["setup_commands"])
    assert "pip install -e ." in setup and "MLFLOW_TRACKING_URI" in setup


def test_cluster_yaml_rejects_a_broken_config():
    import jsonschema
    import pytest
    from ray.autoscaler._private.util import validate_config

    cfg = _config()
    cfg["head_node_type"] = "no_such_type"
    cfg["cluster_synced_files"] = []
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        validate_config(cfg)
