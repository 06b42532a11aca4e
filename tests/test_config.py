"""Typed configs: every shipped YAML validates; unknown or mistyped keys name the key and the file; the
packaged defaults load from any folder; file references in a YAML are relative to its folder."""

import json
from pathlib import Path

import pytest

from vidrip.config import ConfigError, StrictConfig, apply_overrides, config_file, load_config, packaged_configs
from vidrip.curate.bench import BenchCurateConfig
from vidrip.curate.detector_train import DetectorTrainConfig
from vidrip.curate.pipeline import CurateConfig
from vidrip.data.bench import BenchFingerprintConfig
from vidrip.data.sample.build import SampleConfig
from vidrip.demo import DemoConfig
from vidrip.eval.config import EvalConfig
from vidrip.pipeline.config import PipelineConfig
from vidrip.serve.bench import BenchServeConfig
from vidrip.sweep.run import SweepConfig
from vidrip.train.bench import BenchTrainConfig
from vidrip.train.chain import TrainConfig

# Every YAML in the repository, with the schema it is for. A new YAML must be added here.
SCHEMAS = {
    "jobs/configs/sample.yaml": SampleConfig,
    "jobs/configs/demo.yaml": DemoConfig,
    "jobs/configs/train_ov7b.yaml": TrainConfig,
    "jobs/configs/bench_train.yaml": BenchTrainConfig,
    "jobs/configs/bench_train_gpu.yaml": BenchTrainConfig,
    "jobs/configs/bench_curate.yaml": BenchCurateConfig,
    "jobs/configs/bench_serve.yaml": BenchServeConfig,
    "jobs/configs/bench_fingerprint.yaml": BenchFingerprintConfig,
    "jobs/configs/pipeline_ov7b.yaml": PipelineConfig,
    "tune_configs/lora_sweep_7b.yaml": SweepConfig,
}
# The configs vidrip ships (platform/vidrip/defaults/, package data), by name; the library's defaults.
PACKAGED = {
    "train_tiny": TrainConfig,
    "train_detector": DetectorTrainConfig,
    "curate": CurateConfig,
    "eval": EvalConfig,
    "pipeline_tiny": PipelineConfig,
    "lora_sweep_tiny": SweepConfig,
}
PACKAGED_SERVE = ["serve_tiny"]
DEEPSPEED = {"zero2": 2, "zero3": 3}  # name: ZeRO stage
# Repository paths that link to a packaged config (the README's commands use them), never copies of one.
LINKS = {
    "jobs/configs/train_tiny.yaml": "train_tiny",
    "jobs/configs/train_detector.yaml": "train_detector",
    "jobs/configs/curate.yaml": "curate",
    "jobs/configs/eval.yaml": "eval",
    "jobs/configs/pipeline_tiny.yaml": "pipeline_tiny",
    "tune_configs/lora_sweep_tiny.yaml": "lora_sweep_tiny",
    "serve_apps/tiny.yaml": "serve_tiny",
}
# Serve config files: Ray's own schema for the file, vidrip's ServeConfig for the application's args.
SERVE_YAMLS = ["serve_apps/tiny.yaml", "serve_apps/ov7b.yaml"]
# Cluster files: Ray's ray-schema.json, the KubeRay CRDs and Kubernetes names (tests/test_cluster.py).
CLUSTER_YAMLS = [
    "cluster/aws-gpu.yaml",
    "cluster/kuberay/raycluster.yaml",
    "cluster/kuberay/rayservice.yaml",
    "cluster/kuberay/mlflow.yaml",
    "cluster/kuberay/rayjob-pipeline.yaml",
]
YAML_FOLDERS = ("jobs", "serve_apps", "tune_configs", "cluster")


def test_every_shipped_yaml_is_known(repo):
    found = {str(p.relative_to(repo)) for d in YAML_FOLDERS for p in (repo / d).rglob("*.y*ml")}
    known = set(SCHEMAS) | set(SERVE_YAMLS) | set(CLUSTER_YAMLS) | set(LINKS)
    assert found == known, "add new YAML files with their schema"
    assert set(packaged_configs()) == set(PACKAGED) | set(PACKAGED_SERVE) | set(DEEPSPEED)


@pytest.mark.parametrize("rel", sorted(LINKS))
def test_repository_paths_of_packaged_configs_are_links_not_copies(repo, rel):
    assert (repo / rel).is_symlink(), f"{rel} must stay a link to the packaged {LINKS[rel]} (no copies)"
    assert (repo / rel).resolve() == config_file(LINKS[rel]).resolve()


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_packaged_config_validates_from_any_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert isinstance(load_config(PACKAGED[name], name), PACKAGED[name])


@pytest.mark.parametrize("name", sorted(DEEPSPEED))
def test_packaged_deepspeed_configs(name):
    ds = json.loads(config_file(name).read_text())
    assert ds["zero_optimization"]["stage"] == DEEPSPEED[name]


@pytest.mark.parametrize("rel", SERVE_YAMLS)
def test_serve_yaml_validates_against_rays_schema_and_ours(repo, rel):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from vidrip.serve.launch import load_serve_yaml

    schema = ServeDeploySchema.model_validate(yaml.safe_load((repo / rel).read_text()))
    assert schema.applications[0].import_path == "serve_apps.vidrip_app:build_app"
    spec = load_serve_yaml(repo / rel)
    assert spec.config.replicas.max_replicas >= spec.config.replicas.min_replicas


@pytest.mark.parametrize("name", PACKAGED_SERVE)
def test_packaged_serve_config_loads_from_any_folder(name, tmp_path, monkeypatch):
    from vidrip.serve.launch import load_serve_yaml

    monkeypatch.chdir(tmp_path)
    assert load_serve_yaml(name).config.served_name == "vidrip-base"


@pytest.mark.parametrize("rel", sorted(SCHEMAS))
def test_shipped_yaml_validates(repo, rel):
    cfg = load_config(SCHEMAS[rel], repo / rel)
    assert isinstance(cfg, SCHEMAS[rel])


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("seed: 1\nsede: 2\n")
    with pytest.raises(ConfigError) as exc:
        load_config(SampleConfig, f)
    assert str(f) in str(exc.value) and "unknown key 'sede'" in str(exc.value)


def test_nested_unknown_key_is_dotted(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("ray:\n  num_cpu: 2\n")
    with pytest.raises(ConfigError, match=r"unknown key 'ray.num_cpu'"):
        load_config(DemoConfig, f)


def test_wrong_type_names_key_and_value(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("raw_fps: fast\n")
    with pytest.raises(ConfigError) as exc:
        load_config(SampleConfig, f)
    msg = str(exc.value)
    assert str(f) in msg and "key 'raw_fps'" in msg and "'fast'" in msg


def test_overrides_parse_yaml_scalars_and_reach_nested_sections(repo):
    cfg = load_config(
        PipelineConfig, repo / "jobs/configs/pipeline_tiny.yaml", ["ray.num_cpus=1", "sample.seed=7", "merge=false"]
    )
    assert cfg.ray.num_cpus == 1 and cfg.sample.seed == 7 and cfg.merge is False


def test_bad_override_is_reported_as_from_the_command_line(repo):
    with pytest.raises(ConfigError, match=r"command-line override.*unknown key 'ray\.cpus'"):
        load_config(DemoConfig, repo / "jobs/configs/demo.yaml", ["ray.cpus=1"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(DemoConfig, None, ["ray.num_cpus"])


def test_overrides_reach_into_lists_by_index_and_leave_the_source_alone():
    data = {"models": [{"name": "a", "max_tokens": 1024}, {"name": "b", "max_tokens": 1024}]}
    out = apply_overrides(data, ["models.1.max_tokens=8", "models.0=null"], "cli")
    assert out == {"models": [None, {"name": "b", "max_tokens": 8}]}
    assert data["models"][1]["max_tokens"] == 1024
    with pytest.raises(ConfigError, match="'2' is not an index of a list of 2"):
        apply_overrides(data, ["models.2.max_tokens=8"], "cli")
    with pytest.raises(ConfigError, match="'x' is not an index"):
        apply_overrides(data, ["models.x=1"], "cli")


def test_override_into_a_scalar_is_an_error():
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"], "cli")


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(SampleConfig, tmp_path / "nope.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(SampleConfig, f)


def test_assignment_is_validated():
    class C(StrictConfig):
        n: int = 1

    c = C()
    with pytest.raises(ValueError):
        c.n = "many"


def test_file_references_in_a_yaml_are_relative_to_its_folder(tmp_path, monkeypatch):
    folder = (tmp_path / "configs").resolve()
    (folder / "steps").mkdir(parents=True)
    (folder / "steps" / "train.yaml").write_text("stages: [0]\ndeepspeed: {full: ds.json, lora: zero3}\n")
    (folder / "pipe.yaml").write_text(
        "workdir: work\nsample: {out: work/sample}\ntrain: {config: steps/train.yaml}\n"
        f"sweep: {{config: lora_sweep_tiny}}\nserve: {{config: ../serve.yaml}}\neval: {{config: {tmp_path}/e.yaml}}\n"
    )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")

    cfg = load_config(PipelineConfig, "../configs/pipe.yaml")
    assert cfg.train.config == str(folder / "steps" / "train.yaml")
    assert cfg.serve.config == str(folder.parent / "serve.yaml")
    assert cfg.eval.config == f"{tmp_path}/e.yaml"  # absolute: as written
    assert cfg.sweep.config == "lora_sweep_tiny"  # a name: the packaged one, wherever vidrip is installed
    assert cfg.detector.config == "train_detector"  # the schema's default: a packaged name too
    assert cfg.workdir == "work" and cfg.sample.out == "work/sample"  # work and output folders: the cwd's

    train = load_config(TrainConfig, cfg.train.config)  # the step's own references: relative to its folder
    assert train.deepspeed == {"full": str(folder / "steps" / "ds.json"), "lora": "zero3"}

    # a path on the command line is the current directory's, like any path typed in a shell
    cfg = load_config(PipelineConfig, "../configs/pipe.yaml", ["train.config=mine.yaml", "serve.config=zero3"])
    assert cfg.train.config == "mine.yaml" and cfg.serve.config == "zero3"
    assert cfg.sweep.config == "lora_sweep_tiny"


def test_eval_and_demo_reference_files_relative_to_their_yaml(tmp_path):
    (tmp_path / "eval.yaml").write_text("models: [{name: a, model: m}]\nserve: {config: apps/serve.yaml}\n")
    assert load_config(EvalConfig, tmp_path / "eval.yaml").serve.config == str(tmp_path / "apps" / "serve.yaml")
    assert load_config(EvalConfig, "eval").serve.config == "serve_tiny"
    (tmp_path / "demo.yaml").write_text("pipeline: pipe.yaml\n")
    assert load_config(DemoConfig, tmp_path / "demo.yaml").pipeline == str(tmp_path / "pipe.yaml")


def test_an_unknown_packaged_name_names_the_key_and_what_vidrip_ships():
    with pytest.raises(ConfigError, match=r"key 'deepspeed': .*no packaged config named 'zero4' \(.*zero2, zero3"):
        load_config(SweepConfig, "lora_sweep_tiny", ["deepspeed=zero4"])
    with pytest.raises(ConfigError, match=r"no packaged config named 'train_tin'.*e\.g\. \./train_tin"):
        load_config(TrainConfig, "train_tin")
    assert config_file("./train_tin") == Path("train_tin") and config_file("a.yaml") == Path("a.yaml")
