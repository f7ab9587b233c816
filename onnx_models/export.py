"""ONNX export of the three model families to one serving contract.

Every exported graph has one input ``features`` (``(n, d)`` float32, ``d`` = number of features of
:data:`bidder.query.features.FEATURE_SPEC`) and one output ``p`` (``(n,)`` float32 probability of the positive
class). Nothing else: no ZipMap (a list of dicts, which made skl2onnx's LR 5x slower), no label output.

* LR: scikit-learn ``StandardScaler + LogisticRegression`` through skl2onnx (``zipmap=False``); the
  ``(n, 2)`` probability output is narrowed to column 1 and the label branch pruned.
* GBDT: LightGBM through onnxmltools (``TreeEnsembleClassifier``), narrowed the same way. Tree
  tolerance: ONNX stores split thresholds as float32 while LightGBM compares in float64, so a feature
  value lying between a float64 threshold and its float32 rounding can take the other branch. Outputs
  agree to ~1e-7 except on such rows; the parity test allows max |dp| <= 1e-4 over all rows and
  requires 99.9 % of rows within 1e-6.
* MLP: the wide-and-deep network is written straight from the trained PyTorch weights with
  ``onnx.helper`` (named initializers ``mu``, ``inv_std``, ``deep.k.weight/bias``, ``head.*``,
  ``wide.*`` that :class:`bidder.query.scoring.NumpyMlpScorer` reads). The TorchScript exporter is
  deprecated in torch 2.13 and the dynamo exporter needs onnxscript; writing six ops by hand is
  smaller than either and keeps the graph deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "mlp_graph", "narrow_to_positive_class"]

INPUT_NAME = "features"
OUTPUT_NAME = "p"
OPSET = 17
F32 = npt.NDArray[np.float32]


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs no graph output needs."""
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    used = {i for n in graph.node for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def narrow_to_positive_class(model: onnx.ModelProto, prob_output: str) -> onnx.ModelProto:
    """Replace a classifier's outputs by ``p = prob_output[:, 1]`` of shape ``(n,)``."""
    g = model.graph
    if len(g.input) != 1:
        raise ValueError(f"expected one input, got {[i.name for i in g.input]}")
    g.initializer.append(numpy_helper.from_array(np.array(1, np.int64), "positive_class"))
    g.node.append(helper.make_node("Gather", [prob_output, "positive_class"], [OUTPUT_NAME], axis=1))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["n"]))
    _prune(g)
    onnx.checker.check_model(model)
    return model


def mlp_graph(
    *,
    mu: F32,
    inv_std: F32,
    layers: Sequence[tuple[F32, F32]],
    head: tuple[F32, F32],
    wide: tuple[F32, F32],
    name: str,
) -> onnx.ModelProto:
    """``p = sigmoid(deep(z) + wide(z))``, ``z = (x - mu) * inv_std``, weights in PyTorch layout."""
    d = len(mu)
    inits = [
        numpy_helper.from_array(np.asarray(mu, np.float32), "mu"),
        numpy_helper.from_array(np.asarray(inv_std, np.float32), "inv_std"),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, "mu"], ["centered"]),
        helper.make_node("Mul", ["centered", "inv_std"], ["z"]),
    ]
    h = "z"
    for k, (w, b) in enumerate(layers):
        inits += [
            numpy_helper.from_array(np.asarray(w, np.float32), f"deep.{k}.weight"),
            numpy_helper.from_array(np.asarray(b, np.float32), f"deep.{k}.bias"),
        ]
        nodes += [
            helper.make_node("Gemm", [h, f"deep.{k}.weight", f"deep.{k}.bias"], [f"a{k}"], transB=1),
            helper.make_node("Relu", [f"a{k}"], [f"h{k}"]),
        ]
        h = f"h{k}"
    for part, (w, b) in (("head", head), ("wide", wide)):
        inits += [
            numpy_helper.from_array(np.asarray(w, np.float32), f"{part}.weight"),
            numpy_helper.from_array(np.asarray(b, np.float32), f"{part}.bias"),
        ]
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "flat"))
    nodes += [
        helper.make_node("Gemm", [h, "head.weight", "head.bias"], ["deep_logit"], transB=1),
        helper.make_node("Gemm", ["z", "wide.weight", "wide.bias"], ["wide_logit"], transB=1),
        helper.make_node("Add", ["deep_logit", "wide_logit"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p2"]),
        helper.make_node("Reshape", ["p2", "flat"], [OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["n", d])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["n"])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bidder.onnx_models"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
