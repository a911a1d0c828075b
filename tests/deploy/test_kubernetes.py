"""deploy/kubernetes/ validated offline: every built-in object against Kubernetes' own OpenAPI schemas
(kubernetes-validate, strict: an unknown field is an error), KEDA's objects against KEDA's CRD schema as the
cloudcoil-models-keda package ships it (models generated from KEDA 2.16.1's CRDs; a round trip that must lose
nothing, since the models ignore unknown fields), and the links between objects and to the service's own names.
"""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tumorsynth.models.families import family_names
from tumorsynth.settings import Settings
from tumorsynth.workers.celery_app import queue_lists

from .paths import KUBERNETES

# oldest and newest Kubernetes minor versions we claim to run on
VERSIONS = ("1.30.0", "1.37.0")
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# KEDA's redis-sentinel scaler parameters (keda.sh/docs/2.16/scalers/redis-sentinel-lists)
SENTINEL_SCALER_KEYS = {
    "addresses",
    "addressesFromEnv",
    "hosts",
    "ports",
    "sentinelMaster",
    "sentinelMasterFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
    "usernameFromEnv",
    "passwordFromEnv",
    "sentinelUsernameFromEnv",
    "sentinelPasswordFromEnv",
}


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def applied() -> list[dict]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    return [d for name in kustomization["resources"] for d in documents(KUBERNETES / name)]


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in applied() if d["kind"] == kind}


def containers(workload: dict) -> list[dict]:
    spec = workload["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def test_kustomization_applies_every_manifest_but_the_secrets_example():
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml", "secrets.example.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert kustomization["namespace"] == "tumorsynth"


@pytest.mark.parametrize("version", VERSIONS)
def test_builtin_objects_validate_strictly_against_kubernetes_schemas(version):
    docs = applied() + documents(KUBERNETES / "secrets.example.yaml")
    checked = 0
    for doc in (d for d in docs if d["kind"] not in KEDA_KINDS):
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError naming the field
        checked += 1
    assert checked >= 12


def test_strict_validation_refuses_a_misspelt_field():
    api = by_kind("Deployment")["tumorsynth-api"]
    bad = yaml.safe_load(yaml.safe_dump(api))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = bad["spec"]["template"]["spec"]["containers"][
        0
    ].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[0], strict=True)


def keda_model(kind: str):
    from cloudcoil.models.keda import v1alpha1

    return getattr(v1alpha1, kind)


def test_keda_objects_validate_against_keda_crd_models_losing_no_field():
    keda = [d for d in applied() if d["kind"] in KEDA_KINDS]
    assert keda
    for doc in keda:
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        model = keda_model(doc["kind"]).model_validate(doc)  # raises pydantic.ValidationError on a wrong type
        assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == doc, "a field KEDA does not know"
    misspelt = yaml.safe_load(yaml.safe_dump(keda[0]))
    misspelt["spec"]["minReplicas"] = misspelt["spec"].pop("minReplicaCount")
    assert (
        keda_model("ScaledObject").model_validate(misspelt).model_dump(by_alias=True, exclude_none=True, mode="json")
        != misspelt
    )


def test_keda_scales_the_worker_on_the_celery_queue_it_consumes():
    so = by_kind("ScaledObject")["tumorsynth-worker"]
    worker = by_kind("Deployment")[so["spec"]["scaleTargetRef"]["name"]]
    args = containers(worker)[-1]["args"]
    consumed = set(args[args.index("--queues") + 1].split(","))
    queues = set(Settings().queues(family_names()))
    assert so["spec"]["minReplicaCount"] >= 1  # workers also run the reaper and webhook deliveries
    assert "replicas" not in worker["spec"], "KEDA owns the worker count"
    lists = {name for q in queues & consumed for name in queue_lists(q)}
    for trigger in so["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "redis-sentinel" and set(meta) <= SENTINEL_SCALER_KEYS, meta
        assert meta["listName"] in lists, (meta["listName"], lists)
        assert all(isinstance(v, str) for v in meta.values())
        assert int(meta["listLength"]) >= 1
        url = by_kind("ConfigMap")["tumorsynth-settings"]["data"]["TUMORSYNTH_REDIS_URL"]
        hosts, master = re.fullmatch(r"sentinel://([^/]+)/(\w+)", url).groups()
        assert meta["addresses"] == hosts and meta["sentinelMaster"] == master
    # every priority level of the consumed queues is watched (a tenant's second job waits at level 1, ...)
    assert {t["metadata"]["listName"] for t in so["spec"]["triggers"]} == lists


def test_settings_and_secrets_name_real_settings_and_existing_secrets():
    fields = {f"TUMORSYNTH_{f.upper()}" for f in Settings.model_fields}
    secrets = {d["metadata"]["name"]: d for d in documents(KUBERNETES / "secrets.example.yaml")}
    config = by_kind("ConfigMap")["tumorsynth-settings"]["data"]
    assert set(config) <= fields, set(config) - fields
    for secret in secrets.values():
        assert set(secret["stringData"]) <= fields, set(secret["stringData"]) - fields
    for workload in list(by_kind("Deployment").values()):
        for c in containers(workload):
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
                else:
                    assert source["configMapRef"]["name"] in by_kind("ConfigMap")
            assert {e["name"] for e in c.get("env", []) if e["name"].startswith("TUMORSYNTH_")} <= fields


def test_api_probes_service_and_autoscaler():
    from tumorsynth.api.routes.health import router

    served = {r.path for r in router.routes}
    api = by_kind("Deployment")["tumorsynth-api"]
    c = containers(api)[0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"/livez", "/readyz"} <= served
    argv = c["args"]
    assert argv[:2] == ["tumorsynth", "serve"] and "--no-worker" in argv
    port = int(argv[argv.index("--port") + 1])
    assert c["ports"][0]["containerPort"] == port
    service = by_kind("Service")["tumorsynth-api"]
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    hpa = by_kind("HorizontalPodAutoscaler")["tumorsynth-api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tumorsynth-api" and hpa["spec"]["minReplicas"] >= 2


def test_gpu_worker_has_a_gpu_and_the_model_volume():
    worker = by_kind("Deployment")["tumorsynth-worker"]
    c = containers(worker)[0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e["value"] for e in c["env"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert env["TUMORSYNTH_DEVICE"] == "cuda" and mounts[env["TUMORSYNTH_MODEL_DIR"]]["readOnly"]
    volume = next(v for v in worker["spec"]["template"]["spec"]["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"]["claimName"] in by_kind("PersistentVolumeClaim")


def test_every_pod_is_non_root_and_every_container_limited():
    workloads = list(by_kind("Deployment").values()) + list(by_kind("StatefulSet").values())
    assert len(workloads) == 3
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        assert w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tumorsynth"
        for c in containers(w):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), c["name"]
            assert ":" in c["image"] and not c["image"].endswith(":latest"), c["image"]


def test_redis_init_script_is_valid_sh_and_names_the_sentinel_master():
    import subprocess

    script = by_kind("ConfigMap")["redis-scripts"]["data"]["init.sh"]
    r = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    master = re.search(r"/(\w+)$", by_kind("ConfigMap")["tumorsynth-settings"]["data"]["TUMORSYNTH_REDIS_URL"])[1]
    assert f"sentinel monitor {master} " in script and f"get-master-addr-by-name {master}" in script
    sts = by_kind("StatefulSet")["redis"]
    assert sts["spec"]["replicas"] == 3 and containers(sts)[-1]["command"][-1] == "--sentinel"


@pytest.mark.parametrize(
    "pod, sentinel_answer, expect_primary",
    [
        ("redis-0", "", "redis-0"),  # first start: no Sentinel answers, pod 0 is the primary
        ("redis-1", "", "redis-0"),
        ("redis-0", "redis-2", "redis-2"),  # pod 0 restarting after a failover rejoins as the new primary's replica
        ("redis-2", "redis-2", "redis-2"),
    ],
)
def test_redis_init_script_follows_the_sentinels(tmp_path, pod, sentinel_answer, expect_primary):
    """init.sh run by sh as in the pod. No cluster DNS here, so ``redis-cli`` is a script on PATH that answers
    ``sentinel get-master-addr-by-name`` as a Sentinel does (host, then port), or fails as an unreachable one."""
    import os
    import subprocess

    domain = "redis-headless.ns.svc.cluster.local"
    bin_dir, conf = tmp_path / "bin", tmp_path / "conf"
    bin_dir.mkdir(), conf.mkdir()
    cli = bin_dir / "redis-cli"
    cli.write_text(
        f"#!/bin/sh\nprintf '%s\\n6379\\n' '{sentinel_answer}.{domain}'\n"
        if sentinel_answer
        else "#!/bin/sh\necho 'Could not connect to Redis' >&2\nexit 1\n"
    )
    cli.chmod(0o755)
    script = by_kind("ConfigMap")["redis-scripts"]["data"]["init.sh"].replace("/conf/", f"{conf}/")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "POD_NAME": pod, "POD_NAMESPACE": "ns"}
    r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    redis_conf, sentinel_conf = (conf / "redis.conf").read_text(), (conf / "sentinel.conf").read_text()
    primary = f"{expect_primary}.{domain}"
    assert f"sentinel monitor mymaster {primary} 6379 2" in sentinel_conf
    assert f"replica-announce-ip {pod}.{domain}" in redis_conf and "appendonly yes" in redis_conf
    if pod == expect_primary:
        assert "replicaof" not in redis_conf
    else:
        assert f"replicaof {primary} 6379" in redis_conf


def test_the_pods_settings_load_and_the_example_secrets_are_refused(monkeypatch):
    """What the API pod's environment builds: a valid Settings, which refuses to serve with the example's secrets
    and serves once they are replaced."""
    api = containers(by_kind("Deployment")["tumorsynth-api"])[0]
    secrets = {d["metadata"]["name"]: d["stringData"] for d in documents(KUBERNETES / "secrets.example.yaml")}
    env: dict[str, str] = {}
    for source in api["envFrom"]:
        if "configMapRef" in source:
            env |= by_kind("ConfigMap")[source["configMapRef"]["name"]]["data"]
        else:
            env |= secrets[source["secretRef"]["name"]]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    host = api["args"][api["args"].index("--host") + 1]
    with pytest.raises(ValueError, match="placeholder"):
        Settings().check_safe_to_serve(host)
    import secrets as random

    monkeypatch.setenv("TUMORSYNTH_API_KEYS", f"hospital-a:{random.token_urlsafe(32)}")
    monkeypatch.setenv("TUMORSYNTH_S3_SECRET_KEY", random.token_urlsafe(32))
    monkeypatch.setenv("TUMORSYNTH_URL_SIGNING_KEY", random.token_urlsafe(32))
    settings = Settings()
    settings.check_safe_to_serve(host)
    assert settings.redis_url.startswith("sentinel://") and settings.job_time_limit_seconds == 10800
