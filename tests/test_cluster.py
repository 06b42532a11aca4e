"""cluster/: the `ray up` YAML against Ray's own schema, the KubeRay manifests against the KubeRay v1.7.0 CRDs
(strictly: an unknown field is an error, as a typo would be silently dropped by the API server), the Serve
config inside the RayService against Ray's ServeDeploySchema and vidrip's ServeConfig, and the versions
and names that tie the files together."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
CRD_DIR = Path(os.environ.get("VIDRIP_KUBERAY_CRDS", REPO.parent / "shared" / "kuberay"))
CRDS = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
MANIFESTS = ["kuberay/raycluster.yaml", "kuberay/rayservice.yaml"]


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _strict(schema):
    """The schema with ``additionalProperties: false`` wherever it lists properties and keeps no unknown fields."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_schema(kind: str) -> dict:
    path = CRD_DIR / CRDS[kind]
    if not path.is_file():
        pytest.skip(f"KubeRay CRDs not found in {CRD_DIR} (set VIDRIP_KUBERAY_CRDS to the folder with {CRDS[kind]})")
    crd = yaml.safe_load(path.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _strict(version["schema"]["openAPIV3Schema"])


def _images(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image" and isinstance(v, str)] + [
            i for v in node.values() for i in _images(v)
        ]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def _env(node, name: str) -> list[str]:
    if isinstance(node, dict):
        found = [node["value"]] if node.get("name") == name and "value" in node else []
        return found + [v for child in node.values() for v in _env(child, name)]
    if isinstance(node, list):
        return [v for child in node for v in _env(child, name)]
    return []


def test_ray_up_yaml_validates_against_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types and {"cpu_worker", "gpu_worker"} <= set(types)
    assert types["head"]["resources"] == {"CPU": 0}  # the head schedules no work
    assert sum(t.get("max_workers", 0) for t in types.values()) <= cfg["max_workers"]
    assert cfg["docker"]["image"].endswith(f"ray{ray.__version__}")
    assert any("MLFLOW_TRACKING_URI" in opt for opt in cfg["docker"]["run_options"])
    assert any("/mnt/shared" in opt for opt in cfg["docker"]["run_options"])
    broken = copy.deepcopy(cfg)
    broken["provider"].pop("type")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_kuberay_manifests_validate_against_the_v1_7_crds(manifest):
    [doc] = _docs(CLUSTER / manifest)
    assert doc["apiVersion"] == "ray.io/v1"
    schema = _crd_schema(doc["kind"])
    jsonschema.validate(doc, schema)
    cluster = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["enableInTreeAutoscaling"] is True and cluster["authOptions"]["mode"] == "token"
    images = _images(doc)
    assert images and all(i.endswith(f"ray{ray.__version__}") for i in images), images
    gpu = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu and "nvidia.com/gpu" in gpu[0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    typo = copy.deepcopy(doc)
    cluster = typo["spec"] if doc["kind"] == "RayCluster" else typo["spec"]["rayClusterConfig"]
    cluster["workerGroupSpec"] = cluster.pop("workerGroupSpecs")  # a typo the API server would drop silently
    with pytest.raises(jsonschema.ValidationError, match="workerGroupSpec"):
        jsonschema.validate(typo, schema)


def test_the_rayservice_serves_ov7b_yaml_and_its_config_is_valid():
    from ray.serve.schema import ServeDeploySchema

    from vidrip.serve.config import ServeConfig

    [doc] = _docs(CLUSTER / "kuberay" / "rayservice.yaml")
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve_config)
    for app in serve_config["applications"]:
        ServeConfig.model_validate(app["args"])
    ov7b = yaml.safe_load((REPO / "serve_apps" / "ov7b.yaml").read_text())
    assert serve_config["applications"] == ov7b["applications"]  # one application, defined once
    env = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert any(e["name"] == "VIDRIP_API_KEY" and "secretKeyRef" in e["valueFrom"] for e in env)


def test_the_mlflow_server_and_shared_volume_are_the_ones_the_ray_pods_use():
    import mlflow

    docs = _docs(CLUSTER / "kuberay" / "mlflow.yaml")
    by_kind = {}
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
        by_kind.setdefault(d["kind"], []).append(d)
    [server] = [d for d in by_kind["Deployment"] if d["metadata"]["name"] == "vidrip-mlflow"]
    [container] = server["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(f":v{mlflow.__version__}")
    assert "postgresql://" in container["args"][0] and "--serve-artifacts" in container["args"][0]
    services = {d["metadata"]["name"]: d for d in by_kind["Service"]}
    claims = {d["metadata"]["name"] for d in by_kind["PersistentVolumeClaim"]}
    for manifest in MANIFESTS:
        [doc] = _docs(CLUSTER / manifest)
        uris = set(_env(doc, "MLFLOW_TRACKING_URI"))
        assert uris, manifest
        for uri in uris:
            host, port = uri.removeprefix("http://").split(":")
            assert host in services and int(port) == services[host]["spec"]["ports"][0]["port"], uri
        text = (CLUSTER / manifest).read_text()
        assert all(f"claimName: {c}" in text for c in claims)


def test_the_rayjob_runs_the_pipeline_on_the_raycluster_with_a_config_that_loads():
    import shlex

    from vidrip.config import load_config
    from vidrip.pipeline.config import PipelineConfig
    from vidrip.pipeline.run import validate

    [doc] = _docs(CLUSTER / "kuberay" / "rayjob-pipeline.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    schema = _crd_schema("RayJob")
    jsonschema.validate(doc, schema)
    [cluster] = _docs(CLUSTER / "kuberay" / "raycluster.yaml")
    assert doc["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert all(i.endswith(f"ray{ray.__version__}") for i in _images(doc))
    run = shlex.split(doc["spec"]["entrypoint"].split("&&")[1])
    assert run[:2] == ["python", "jobs/pipeline.py"] and (REPO / run[1]).is_file()
    config = REPO / run[run.index("--config") + 1]
    overrides = [a for a in run[run.index("--config") + 2 :] if "=" in a]
    cfg = load_config(PipelineConfig, config, overrides)
    assert cfg.ray.address == "auto" and cfg.workdir.startswith("/mnt/shared")
    validate(cfg)  # every step's own config loads and ties up
    yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    typo = copy.deepcopy(doc)
    typo["spec"]["entryPoint"] = typo["spec"].pop("entrypoint")
    with pytest.raises(jsonschema.ValidationError, match="entryPoint"):
        jsonschema.validate(typo, schema)
