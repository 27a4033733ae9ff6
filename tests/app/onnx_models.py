"""Small ONNX models made with onnx.helper for the tests of serving a user's own model:
nothing is downloaded, and each is what a user might bring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

FLOAT, INT64, BOOL, STRING = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL, TensorProto.STRING


ML_OPSET = helper.make_opsetid("ai.onnx.ml", 3)
"""The domain of scikit-learn's converted operators (ZipMap)."""


def save(model_dir: Path, name: str, graph: onnx.GraphProto, version: int = 1, opset: int = 17,
         file: str = "model.onnx", external_data: str | None = None,
         other_opsets: tuple[onnx.OperatorSetIdProto, ...] = (), checked: bool = True) -> Path:
    """`external_data`: the file beside the graph that its weights go to, as exporters
    write graphs over 2 GB (ONNX's external data). `checked`: ONNX's checker passes it
    (what ONNX Runtime loads is wider: tensors of the graph without a shape)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *other_opsets], ir_version=9)
    if checked:
        onnx.checker.check_model(model)
    folder = model_dir / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        onnx.save(model, folder / file)
    else:
        onnx.save(model, folder / file, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=external_data, size_threshold=0)
    return folder / file


def reference(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What ONNX Runtime answers in-process: what the server must answer too."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def _weights(name: str, shape: tuple[int, ...], seed: int = 0) -> onnx.TensorProto:
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name)


def mlp(first_axis: int | str = "batch") -> onnx.GraphProto:
    """4 features -> 3 scores: the seeds' multilayer perceptron, one layer deep."""
    return helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["scores"])],
        "mlp", [helper.make_tensor_value_info("features", FLOAT, [first_axis, 4])],
        [helper.make_tensor_value_info("scores", FLOAT, [first_axis, 3])], [_weights("w", (4, 3)), _weights("b", (3,))])


def shapeless_mlp(inputs: bool = True) -> onnx.GraphProto:
    """The multilayer perceptron with its output declaring no shape at all, not even a rank,
    and its input too where `inputs`: ONNX Runtime loads it (and gives [] for these tensors,
    as for a scalar), though ONNX's checker wants a shape on a graph's inputs and outputs."""
    return helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["scores"])],
        "mlp", [helper.make_tensor_value_info("features", FLOAT, None if inputs else ["batch", 4])],
        [helper.make_tensor_value_info("scores", FLOAT, None)], [_weights("w", (4, 3)), _weights("b", (3,))])


def squared() -> onnx.GraphProto:
    """One scalar in, its square out: rank-0 tensors, so a model that does not batch."""
    return helper.make_graph([helper.make_node("Mul", ["t", "t"], ["squared"])], "squared",
                             [helper.make_tensor_value_info("t", FLOAT, [])],
                             [helper.make_tensor_value_info("squared", FLOAT, [])])


def zipmapped() -> onnx.GraphProto:
    """A scikit-learn classifier as skl2onnx converts it by default: a label tensor, and the
    probabilities as a sequence of {class: probability} maps (ZipMap), which V2 cannot carry."""
    return helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["scores"]), helper.make_node("Softmax", ["scores"], ["probabilities"]),
         helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
         helper.make_node("ZipMap", ["probabilities"], ["output_probability"], domain="ai.onnx.ml",
                          classlabels_int64s=[0, 1, 2])], "zipmapped",
        [helper.make_tensor_value_info("x", FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("label", INT64, ["batch"]),
         helper.make_value_info("output_probability", helper.make_sequence_type_proto(
             helper.make_map_type_proto(INT64, helper.make_tensor_type_proto(FLOAT, []))))],
        [_weights("w", (4, 3))])


def flattened() -> onnx.GraphProto:
    """[n, 4] -> [4n]: a dynamic first axis everywhere, and two rows' outputs join up as the
    batch's, but an output row is not an input row: not a batch axis."""
    return helper.make_graph(
        [helper.make_node("Reshape", ["x", "flat"], ["values"])], "flattened",
        [helper.make_tensor_value_info("x", FLOAT, ["n", 4])], [helper.make_tensor_value_info("values", FLOAT, ["m"])],
        [numpy_helper.from_array(np.array([-1], np.int64), "flat")])


def top_k() -> onnx.GraphProto:
    """The k largest of 5 scores, k sent with the request: k past 5 fails in ORT's kernel
    (a FAIL of its own, not the INVALID_ARGUMENT a Gather past its table gives)."""
    return helper.make_graph(
        [helper.make_node("TopK", ["scores", "k"], ["values", "indices"], axis=1)], "top_k",
        [helper.make_tensor_value_info("scores", FLOAT, ["n", 5]), helper.make_tensor_value_info("k", INT64, [1])],
        [helper.make_tensor_value_info("values", FLOAT, ["n", "k"]), helper.make_tensor_value_info("indices", INT64, ["n", "k"])])


def parsed_numbers() -> onnx.GraphProto:
    """Numbers as text -> FP32, a row at a time, so it batches; text that is no number
    fails ORT's Cast kernel (a RUNTIME_EXCEPTION) and the batch with it."""
    return helper.make_graph(
        [helper.make_node("Cast", ["text"], ["number"], to=TensorProto.FLOAT)], "parsed_numbers",
        [helper.make_tensor_value_info("text", STRING, ["n", 1])], [helper.make_tensor_value_info("number", FLOAT, ["n", 1])])


def widened() -> onnx.GraphProto:
    """FP32 in, the same values as FP64 and FP16 out (FP16 overflows to infinity past 65504)."""
    return helper.make_graph(
        [helper.make_node("Cast", ["x"], ["wide"], to=TensorProto.DOUBLE),
         helper.make_node("Cast", ["x"], ["half"], to=TensorProto.FLOAT16)], "widened",
        [helper.make_tensor_value_info("x", FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("wide", TensorProto.DOUBLE, ["batch", 2]),
         helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["batch", 2])])


def mlp_with_softmax() -> onnx.GraphProto:
    """The MLP with a final Softmax: its scores are probabilities already."""
    return helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)],
        "mlp_softmax", [helper.make_tensor_value_info("features", FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probabilities", FLOAT, ["batch", 3])],
        [_weights("w", (4, 3)), _weights("b", (3,))])


def conv(channels: int = 1) -> onnx.GraphProto:
    """An 8x8 image (greyscale, or RGB with channels=3) -> 2 channel means after a 3x3
    convolution and a ReLU."""
    return helper.make_graph(
        [helper.make_node("Conv", ["pixels", "kernel"], ["maps"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["maps"], ["relu"]),
         helper.make_node("ReduceMean", ["relu"], ["scores"], axes=[2, 3], keepdims=0)],
        "conv", [helper.make_tensor_value_info("pixels", FLOAT, ["n", channels, 8, 8])],
        [helper.make_tensor_value_info("scores", FLOAT, ["n", 2])], [_weights("kernel", (2, channels, 3, 3), seed=4)])


def pooled(first_axis: int | str = "n") -> onnx.GraphProto:
    """An RGB 8x8 image -> 4 class scores shaped [n, 4, 1, 1], as a classifier whose last
    layer is a 1x1 convolution gives them (DenseNet's, in Triton's quickstart repository)."""
    return helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["data_0"], ["pooled"]),
         helper.make_node("Conv", ["pooled", "kernel"], ["fc6_1"])],
        "pooled", [helper.make_tensor_value_info("data_0", FLOAT, [first_axis, 3, 8, 8])],
        [helper.make_tensor_value_info("fc6_1", FLOAT, [first_axis, 4, 1, 1])], [_weights("kernel", (4, 3, 1, 1), seed=7)])


def lstm(hidden: int = 5) -> onnx.GraphProto:
    """A sequence of 3-feature steps, batch first, the sequence axis dynamic -> the LSTM's
    last hidden state (ORT's LSTM is time first: transposed in and out)."""
    return helper.make_graph(
        [helper.make_node("Transpose", ["steps"], ["time_first"], perm=[1, 0, 2]),
         helper.make_node("LSTM", ["time_first", "W", "R"], ["", "state"], hidden_size=hidden),
         helper.make_node("Transpose", ["state"], ["last"], perm=[1, 0, 2])],
        "lstm", [helper.make_tensor_value_info("steps", FLOAT, ["n", "time", 3])],
        [helper.make_tensor_value_info("last", FLOAT, ["n", 1, hidden])],
        [_weights("W", (1, 4 * hidden, 3), seed=5), _weights("R", (1, 4 * hidden, hidden), seed=6)])


def two_in_two_out() -> onnx.GraphProto:
    """INT64 ids and a BOOL mask in; the masked ids (INT64) and each row's count (INT64) out."""
    zero = numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    return helper.make_graph(
        [helper.make_node("Where", ["mask", "ids", "zero"], ["masked"]),
         helper.make_node("Cast", ["mask"], ["ones"], to=INT64),
         helper.make_node("ReduceSum", ["ones", "axes"], ["count"], keepdims=0)],
        "masking", [helper.make_tensor_value_info("ids", INT64, ["n", 5]),
                    helper.make_tensor_value_info("mask", BOOL, ["n", 5])],
        [helper.make_tensor_value_info("masked", INT64, ["n", 5]),
         helper.make_tensor_value_info("count", INT64, ["n"])], [zero, axes])


def yes_or_no() -> onnx.GraphProto:
    """Strings in; the strings again and whether each is "yes" out (Equal on strings: opset 19)."""
    yes = helper.make_tensor("yes", STRING, [], [b"yes"])
    return helper.make_graph(
        [helper.make_node("Identity", ["words"], ["echo"]), helper.make_node("Equal", ["words", "yes"], ["is_yes"])],
        "yes_or_no", [helper.make_tensor_value_info("words", STRING, ["n", 2])],
        [helper.make_tensor_value_info("echo", STRING, ["n", 2]), helper.make_tensor_value_info("is_yes", BOOL, ["n", 2])],
        [yes])


def half_and_bytes() -> onnx.GraphProto:
    """FP16 doubled, and UINT8 pixels as FP64 fractions: datatypes of other widths."""
    scale = numpy_helper.from_array(np.array(1 / 255, dtype=np.float64), "scale")
    return helper.make_graph(
        [helper.make_node("Add", ["half", "half"], ["doubled"]),
         helper.make_node("Cast", ["pixels"], ["wide"], to=TensorProto.DOUBLE),
         helper.make_node("Mul", ["wide", "scale"], ["fractions"])],
        "typed", [helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["n", 3]),
                  helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["n", 4])],
        [helper.make_tensor_value_info("doubled", TensorProto.FLOAT16, ["n", 3]),
         helper.make_tensor_value_info("fractions", TensorProto.DOUBLE, ["n", 4])], [scale])


def embedding(rows: int = 10) -> onnx.GraphProto:
    """INT64 ids -> rows of a 10-row table: an id out of the table is the client's mistake."""
    return helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["vectors"], axis=0)], "embedding",
        [helper.make_tensor_value_info("ids", INT64, ["n"])],
        [helper.make_tensor_value_info("vectors", FLOAT, ["n", 2])], [_weights("table", (rows, 2), seed=7)])


def centred_over_the_batch() -> onnx.GraphProto:
    """x minus its mean over the first axis: dynamic first axis, but not a batch axis."""
    return helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
         helper.make_node("Sub", ["x", "mean"], ["y"])],
        "centred", [helper.make_tensor_value_info("x", FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", FLOAT, ["n", 2])])


def averaged_over_a_sequence() -> onnx.GraphProto:
    """x [n, length] -> the mean of each row: a dynamic axis besides the first, on which
    zero padding would change the answer."""
    return helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1], keepdims=0)], "averaged",
        [helper.make_tensor_value_info("x", FLOAT, ["n", "length"])],
        [helper.make_tensor_value_info("mean", FLOAT, ["n"])])


def masked_mean() -> onnx.GraphProto:
    """ids [n, length] and mask [n, length] -> the mean of each row's embeddings where its mask
    is 1, as a transformer pools: zero padding (ids 0, mask 0) does not change a row's answer."""
    return helper.make_graph([
        helper.make_node("Gather", ["table", "ids"], ["vectors"], axis=0),
        helper.make_node("Cast", ["mask"], ["weights"], to=FLOAT),
        helper.make_node("Unsqueeze", ["weights", "last"], ["weights3"]),
        helper.make_node("Mul", ["vectors", "weights3"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "one"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["weights3", "one"], ["count"], keepdims=0),
        helper.make_node("Div", ["total", "count"], ["pooled"])], "masked_mean",
        [helper.make_tensor_value_info("ids", INT64, ["n", "length"]),
         helper.make_tensor_value_info("mask", INT64, ["n", "length"])],
        [helper.make_tensor_value_info("pooled", FLOAT, ["n", 2])],
        [_weights("table", (10, 2), seed=3), numpy_helper.from_array(np.array([-1], np.int64), "last"),
         numpy_helper.from_array(np.array([1], np.int64), "one")])


def per_position() -> onnx.GraphProto:
    """ids [n, length] -> a value per position [n, length, 2]: an output of the padded length."""
    return helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["vectors"], axis=0)], "per_position",
        [helper.make_tensor_value_info("ids", INT64, ["n", "length"])],
        [helper.make_tensor_value_info("vectors", FLOAT, ["n", "length", 2])], [_weights("table", (10, 2), seed=4)])


def widen(width: int) -> onnx.GraphProto:
    """x (n, 1) -> y (n, width), x repeated: a small request with a large answer."""
    return helper.make_graph(
        [helper.make_node("Expand", ["x", "shape"], ["y"])], "widen",
        [helper.make_tensor_value_info("x", FLOAT, ["n", 1])],
        [helper.make_tensor_value_info("y", FLOAT, ["n", width])],
        [numpy_helper.from_array(np.array([1, width], np.int64), "shape")])


def picked() -> onnx.GraphProto:
    """Each row's value at its index (GatherElements over a 1-wide axis): only index 0 is
    valid, so generated inputs (ids of 1 and 2) make the model fail, as an index, a k or a
    shape input can in a user's model."""
    return helper.make_graph(
        [helper.make_node("GatherElements", ["values", "index"], ["picked"], axis=1)], "picked",
        [helper.make_tensor_value_info("values", FLOAT, ["n", 1]), helper.make_tensor_value_info("index", INT64, ["n", 1])],
        [helper.make_tensor_value_info("picked", FLOAT, ["n", 1])])


def reshaped_by_input() -> onnx.GraphProto:
    """Six values reshaped to the shape given as an input (no batch axis): a shape of 1s and
    2s, as generated, does not hold six values."""
    return helper.make_graph(
        [helper.make_node("Reshape", ["values", "shape"], ["grid"])], "reshaped_by_input",
        [helper.make_tensor_value_info("values", FLOAT, [6]), helper.make_tensor_value_info("shape", INT64, [2])],
        [helper.make_tensor_value_info("grid", FLOAT, ["rows", "columns"])])


CONTRIB_OPSET = helper.make_opsetid("ai.onnx.contrib", 1)
"""onnxruntime-extensions' custom operators' domain."""


def upper_cased() -> onnx.GraphProto:
    """Text upper-cased by onnxruntime-extensions' StringUpper, a custom operator: ONNX Runtime
    runs it only with that library registered."""
    return helper.make_graph(
        [helper.make_node("StringUpper", ["text"], ["upper"], domain="ai.onnx.contrib")], "upper_cased",
        [helper.make_tensor_value_info("text", STRING, ["n"])], [helper.make_tensor_value_info("upper", STRING, ["n"])])

