"""Model metadata: the JSON sidecar stored beside every ``.onnx`` file, and the checks run at load.

``mlp_ctr.onnx`` comes with ``mlp_ctr.json`` holding:

* ``name``, ``version`` (``<family>-<target>-<first 12 hex of the .onnx sha256>``), ``family``
  (``lr`` | ``gbdt`` | ``mlp`` | ``mlp_int8``), ``target`` (``ctr`` = P(click | impression),
  ``cvr`` = P(purchase | click)), ``onnx_sha256``;
* ``feature_spec``: version, ordered names, dtype and fingerprint of :data:`bidder.query.features.FEATURE_SPEC`
  the model was trained on; ``input_name`` (a ``(n, d)`` float32 tensor) and ``output_name`` (a ``(n,)``
  float32 probability tensor);
* ``training``: simulated time window, row counts, seed and the sha256 of the training matrix;
* ``metrics``: offline AUC/logloss on held-out traffic, with the oracle (true probability) AUC beside;
* ``reference``: one :class:`bidder.monitoring.profile.FeatureProfile` dict per feature (quantile bin edges,
  fractions, mean, median, std, missing rate) fitted on the training matrix, and
  ``prediction_reference``: the profile of the model's predicted probabilities on that matrix;
* ``golden``: a few input rows and the outputs the exported model gave for them, re-checked at load
  within ``golden_atol``.

A model is refused (:class:`ModelSpecError`) when its spec fingerprint differs from the running
code's, or when the ONNX graph's inputs/outputs differ from the sidecar: wrong names, element type,
rank, or feature count.

>>> meta = ModelMeta.example()
>>> ModelMeta.from_dict(meta.to_dict()) == meta
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from bidder.query.features import FEATURE_SPEC, FeatureSpec

__all__ = ["ModelMeta", "ModelSpecError", "TensorInfo", "check_io"]

F32 = npt.NDArray[np.float32]
Family = Literal["lr", "gbdt", "mlp", "mlp_int8"]
Target = Literal["ctr", "cvr"]
FAMILIES: tuple[Family, ...] = ("lr", "gbdt", "mlp", "mlp_int8")
TARGETS: tuple[Target, ...] = ("ctr", "cvr")


class ModelSpecError(ValueError):
    """A model file does not match its metadata or the running feature spec."""


class TensorInfo(Protocol):
    """What ``onnxruntime.InferenceSession.get_inputs()``/``get_outputs()`` items expose."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def shape(self) -> list[int | str | None]: ...


@dataclass(frozen=True, slots=True)
class ModelMeta:
    """The sidecar of one model; ``to_dict``/``from_dict`` round-trip the JSON."""

    name: str
    version: str
    family: Family
    target: Target
    feature_spec: FeatureSpec
    input_name: str
    output_name: str
    onnx_sha256: str
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    reference: tuple[dict[str, Any], ...] = ()
    prediction_reference: dict[str, Any] = field(default_factory=dict)
    golden_inputs: tuple[tuple[float, ...], ...] = ()
    golden_outputs: tuple[float, ...] = ()
    golden_atol: float = 1e-4
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "family": self.family,
            "target": self.target,
            "onnx_sha256": self.onnx_sha256,
            "feature_spec": self.feature_spec.to_dict(),
            "input_name": self.input_name,
            "output_name": self.output_name,
            "training": self.training,
            "metrics": self.metrics,
            "reference": list(self.reference),
            "prediction_reference": self.prediction_reference,
            "golden": {
                "inputs": [list(r) for r in self.golden_inputs],
                "outputs": list(self.golden_outputs),
                "atol": self.golden_atol,
            },
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        try:
            family = str(d["family"])
            target = str(d["target"])
            if family not in FAMILIES or target not in TARGETS:
                raise ModelSpecError(f"unknown family/target {family!r}/{target!r}")
            spec = FeatureSpec.from_dict(d["feature_spec"])
            stored_fp = d["feature_spec"].get("fingerprint")
            if stored_fp is not None and stored_fp != spec.fingerprint:
                raise ModelSpecError("feature_spec fingerprint does not match its names/version")
            golden = d.get("golden", {})
            return cls(
                name=str(d["name"]),
                version=str(d["version"]),
                family=family,
                target=target,
                feature_spec=spec,
                input_name=str(d["input_name"]),
                output_name=str(d["output_name"]),
                onnx_sha256=str(d["onnx_sha256"]),
                training=dict(d.get("training", {})),
                metrics=dict(d.get("metrics", {})),
                reference=tuple(dict(r) for r in d.get("reference", [])),
                prediction_reference=dict(d.get("prediction_reference", {})),
                golden_inputs=tuple(tuple(float(v) for v in r) for r in golden.get("inputs", [])),
                golden_outputs=tuple(float(v) for v in golden.get("outputs", [])),
                golden_atol=float(golden.get("atol", 1e-4)),
                extra=dict(d.get("extra", {})),
            )
        except (KeyError, TypeError) as e:
            raise ModelSpecError(f"malformed model metadata: missing or bad field {e}") from e

    @classmethod
    def load(cls, path: Path) -> ModelMeta:
        """Read a sidecar; a missing or malformed file raises :class:`ModelSpecError`."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelSpecError(f"cannot read model metadata {path}: {e}") from e
        return cls.from_dict(raw)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n")

    def golden_matrix(self) -> F32:
        """Golden inputs as a ``(k, d)`` float32 matrix."""
        d = self.feature_spec.n_features
        return np.asarray(self.golden_inputs, np.float32).reshape(len(self.golden_inputs), d)

    def check_spec(self, spec: FeatureSpec = FEATURE_SPEC) -> None:
        """Refuse a model trained on another feature spec than the running code's."""
        if self.feature_spec.fingerprint != spec.fingerprint:
            raise ModelSpecError(
                f"model {self.name} {self.version} was trained on feature spec v{self.feature_spec.version} "
                f"({self.feature_spec.fingerprint}) but the bidder serves v{spec.version} "
                f"({spec.fingerprint}); names differ at "
                f"{_first_difference(self.feature_spec.names, spec.names)}"
            )

    @classmethod
    def example(cls) -> ModelMeta:
        """A small valid instance (for docs and tests)."""
        return cls(
            name="mlp_ctr",
            version="mlp-ctr-000000000000",
            family="mlp",
            target="ctr",
            feature_spec=FEATURE_SPEC,
            input_name="features",
            output_name="p",
            onnx_sha256="0" * 64,
            golden_inputs=((0.0,) * FEATURE_SPEC.n_features,),
            golden_outputs=(0.5,),
        )


def _first_difference(a: tuple[str, ...], b: tuple[str, ...]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"position {i}: {x!r} vs {y!r}"
    return f"length {len(a)} vs {len(b)}"


def check_io(meta: ModelMeta, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> None:
    """Refuse an ONNX graph whose inputs/outputs do not match the sidecar.

    Expected: exactly one input ``meta.input_name`` of type ``tensor(float)`` and shape
    ``(n, d)`` with ``d = meta.feature_spec.n_features`` (``n`` symbolic or any), and an output
    ``meta.output_name`` of type ``tensor(float)`` and shape ``(n,)`` or ``(n, 1)``.
    """
    d = meta.feature_spec.n_features
    where = f"model {meta.name} ({meta.version})"
    if len(inputs) != 1:
        raise ModelSpecError(f"{where}: expected 1 input, graph has {[i.name for i in inputs]}")
    inp = inputs[0]
    if inp.name != meta.input_name:
        raise ModelSpecError(f"{where}: input is named {inp.name!r}, metadata says {meta.input_name!r}")
    if inp.type != "tensor(float)":
        raise ModelSpecError(f"{where}: input {inp.name!r} is {inp.type}, expected tensor(float)")
    if len(inp.shape) != 2 or inp.shape[1] != d:
        raise ModelSpecError(
            f"{where}: input {inp.name!r} has shape {inp.shape}, expected [n, {d}] "
            f"({d} features of spec v{meta.feature_spec.version})"
        )
    match = [o for o in outputs if o.name == meta.output_name]
    if not match:
        raise ModelSpecError(
            f"{where}: no output named {meta.output_name!r}; graph outputs are {[o.name for o in outputs]}"
        )
    out = match[0]
    if out.type != "tensor(float)":
        raise ModelSpecError(f"{where}: output {out.name!r} is {out.type}, expected tensor(float)")
    if not (len(out.shape) == 1 or (len(out.shape) == 2 and out.shape[1] == 1)):
        raise ModelSpecError(f"{where}: output {out.name!r} has shape {out.shape}, expected [n] or [n, 1]")
