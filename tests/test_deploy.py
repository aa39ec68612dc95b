"""The deployment files validate offline against the schemas their tools use, and say what they are:
deploy/compose/compose.yaml against the Compose specification's schema, deploy/kuberay/limner.yaml
against Kubernetes' (Secret, ConfigMap: kubernetes-validate) and KubeRay's RayService CRD (its
openAPIV3Schema, made strict: an unknown or misspelt field is an error, as kubeconform's -strict makes
it), and each one's limner configuration is one limner accepts. deploy/serve.yaml says it is a cluster
template; serve.local.yaml runs as written (tests/compat/test_ray_cli.py).

Schemas (tests/data/schemas): compose-spec.json from compose-spec/compose-spec (170098b);
ray.io_rayservices.v1.schema.json.gz, the v1 openAPIV3Schema of ray-project/kuberay's
ray-operator/config/crd/bases/ray.io_rayservices.yaml (feeaf72fa)."""

from __future__ import annotations

import gzip
import json
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from limner.server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SCHEMAS = Path(__file__).parent / "data" / "schemas"
KUBERNETES = "1.33"


def strict(schema: Any) -> Any:
    """An openAPIV3Schema where objects with declared properties allow no others (unless they keep
    unknown fields on purpose), so that a misspelt field is an error instead of being pruned."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def test_compose_validates_against_the_compose_specification() -> None:
    spec = json.loads((SCHEMAS / "compose-spec.json").read_text())
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    jsonschema.Draft7Validator(spec).validate(compose)  # its $schema: draft-07 (the URL without "#")
    with pytest.raises(jsonschema.ValidationError):  # a misspelt field is caught
        broken = {**compose["services"]["limner"], "helthcheck": {}}
        jsonschema.Draft7Validator(spec).validate(
            {**compose, "services": {**compose["services"], "limner": broken}}
        )
    services = compose["services"]
    assert set(services) == {"limner", "postgres", "minio", "bucket"}
    assert all("healthcheck" in service for service in services.values())
    limner = services["limner"]
    context = (DEPLOY / "compose" / limner["build"]["context"]).resolve()
    assert (context / limner["build"]["dockerfile"]).is_file()
    assert limner["ports"] == ["127.0.0.1:8000:8000"]  # this machine only, until a key exists
    # The mounted config is one limner accepts, with the URLs the environment gives it.
    mounted = next(v.split(":")[0] for v in limner["volumes"] if v.endswith("/etc/limner/limner.toml:ro"))
    config = tomllib.loads((DEPLOY / "compose" / mounted).read_text())
    env = limner["environment"]
    settings = Settings.model_validate(
        {**config, "keys_url": env["LIMNER_KEYS_URL"], "jobs_url": env["LIMNER_JOBS_URL"]}
    )
    assert settings.storage.kind == "s3" and settings.storage.addressing_style == "path"
    assert settings.storage.bucket in services["bucket"]["command"][0]


def kuberay_documents() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kuberay" / "limner.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_kuberay_secret_and_configmap_validate_against_kubernetes() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    docs = kuberay_documents()
    assert set(docs) == {"Secret", "ConfigMap", "RayService"}
    for kind in ("Secret", "ConfigMap"):
        kubernetes_validate.validate(docs[kind], KUBERNETES, strict=True)
    config = tomllib.loads(docs["ConfigMap"]["data"]["limner.toml"])
    Settings.model_validate(config)  # a configuration limner accepts
    assert set(docs["Secret"]["stringData"]) >= {"LIMNER_SECRET", "LIMNER_KEYS_URL", "LIMNER_JOBS_URL"}


def test_the_rayservice_validates_against_kuberays_crd() -> None:
    from limner.ray_app import RayOptions

    schema = json.loads(gzip.decompress((SCHEMAS / "ray.io_rayservices.v1.schema.json.gz").read_bytes()))
    service = kuberay_documents()["RayService"]
    jsonschema.validate(service, strict(schema))
    with pytest.raises(jsonschema.ValidationError):  # strict: a misspelt field is caught
        jsonschema.validate(
            {**service, "spec": {**service["spec"], "enableInTreeAutoscalling": True}}, strict(schema)
        )
    cluster = service["spec"]["rayClusterConfig"]
    (worker,) = cluster["workerGroupSpecs"]
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The Serve config is limner's application with arguments its builder takes.
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["import_path"] == "limner.ray_app:build_app"
    args = dict(app["args"])
    assert args.pop("config") == "/etc/limner/limner.toml" and args.pop("data_dir")
    options = RayOptions(**args).deployment_options()
    assert options["ray_actor_options"]["num_gpus"] == 1
    assert options["autoscaling_config"]["max_replicas"] <= worker["maxReplicas"]  # one replica per GPU
    for group in (cluster["headGroupSpec"], worker):
        env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "limner.ray_app:proxy_middlewares"


def test_serve_yaml_says_it_is_a_cluster_template() -> None:
    first = (DEPLOY / "serve.yaml").read_text().splitlines()[0]
    assert "CLUSTER TEMPLATE" in first
    local = yaml.safe_load((DEPLOY / "serve.local.yaml").read_text())
    assert local["http_options"]["host"] == "127.0.0.1"
    assert local["applications"][0]["args"]["gpus_per_replica"] == 0
