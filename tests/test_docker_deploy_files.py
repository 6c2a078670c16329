"""deploy/: the files parse, the cluster specs in them validate, and the images start from python:3.11-slim.

No engine needed: this checks what users copy, not a running deployment (the backend tests do that).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from gpufaas.platform.backends.ray_backend import GPU_TYPE_RESOURCE_PREFIX, NODE_RESOURCE_PREFIX
from gpufaas.platform.specs import ClusterSpec, load_yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_dockerfiles_use_python_slim_and_an_entrypoint():
    for name in ("Dockerfile.gateway", "Dockerfile.runtime"):
        text = (DEPLOY / name).read_text()
        assert [line for line in text.splitlines() if line.startswith("FROM")] == ["FROM python:3.11-slim"], name
        assert "ENTRYPOINT" in text
    assert "gpufaas.platform.worker" in (DEPLOY / "Dockerfile.runtime").read_text()


def test_compose_gives_the_gateway_the_host_engine():
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    gw = doc["services"]["gateway"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in gw["volumes"]
    assert gw["build"]["dockerfile"] == "deploy/Dockerfile.gateway"
    assert "docker" in gw["command"]


def test_ray_cluster_nodes_declare_the_resources_the_backend_looks_for():
    doc = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    spec = load_yaml(DEPLOY / "ray-gpufaas-cluster.yaml", ClusterSpec)
    types = doc["available_node_types"]
    assert doc["head_node_type"] in types
    for node in spec.nodes:
        res = types[node.name]["resources"]
        assert res[NODE_RESOURCE_PREFIX + node.name] > 0
        assert res[GPU_TYPE_RESOURCE_PREFIX + node.gpu_type] == node.gpus == res["GPU"]


def test_k8s_manifests_deployment_service_configmap():
    docs = {}
    for p in sorted((DEPLOY / "k8s").glob("*.yaml")):
        d = yaml.safe_load(p.read_text())
        docs[d["kind"]] = d
    assert set(docs) == {"Deployment", "Service", "ConfigMap"}
    ClusterSpec.model_validate(yaml.safe_load(docs["ConfigMap"]["data"]["cluster.yaml"]))
    sel = docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert docs["Service"]["spec"]["selector"] == sel
    c = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert c["ports"][0]["containerPort"] == 8080 and "ray" in c["args"]
    assert (DEPLOY / "ci-prepare-docker.sh").stat().st_mode & 0o111, "ci-prepare-docker.sh must be executable"
