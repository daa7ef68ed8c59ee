"""Write small ONNX models without the ``onnx`` package (absent here, and pinned against protobuf 3.20).

ONNX files are protobuf messages; the few ModelProto fields a tiny graph needs are encoded by hand
below. Field numbers are those of onnx/onnx.proto (stable since IR version 3):

    ModelProto        ir_version=1 (int64), producer_name=2, graph=7, opset_import=8
    OperatorSetIdProto domain=1, version=2
    GraphProto        node=1, name=2, initializer=5, input=11, output=12
    NodeProto         input=1, output=2, name=3, op_type=4, attribute=5
    AttributeProto    name=1, f=2, i=3, ints=8, type=20 (FLOAT=1, INT=2, INTS=7)
    TensorProto       dims=1, data_type=2 (FLOAT=1), name=8, raw_data=9 (little-endian)
    ValueInfoProto    name=1, type=2
    TypeProto         tensor_type=1 -> {elem_type=1, shape=2 -> {dim=1 -> {dim_value=1, dim_param=2}}}

onnxruntime parsing the result is the check that the encoding is right (tests/test_tagger.py).
"""

from __future__ import annotations

import struct
from typing import Iterable, Sequence, Union

import numpy as np

Dim = Union[int, str, None]  # a fixed size, a symbolic name, or unknown

FLOAT = 1  # TensorProto.DataType.FLOAT
ATTR_INT, ATTR_INTS = 2, 7  # AttributeProto.AttributeType


def _varint(value: int) -> bytes:
    if value < 0:  # int64 negatives are ten-byte two's complement varints
        value += 1 << 64
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3 | 0) + _varint(value)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _str_field(number: int, text: str) -> bytes:
    return _bytes_field(number, text.encode("utf-8"))


def tensor(name: str, array: np.ndarray) -> bytes:
    """A float32 TensorProto (for the graph's initializers)."""
    array = np.ascontiguousarray(array, dtype="<f4")
    out = b"".join(_int_field(1, d) for d in array.shape)
    out += _int_field(2, FLOAT) + _str_field(8, name) + _bytes_field(9, array.tobytes())
    return out


def value_info(name: str, shape: Sequence[Dim]) -> bytes:
    """A float32 graph input/output with the given (possibly symbolic) shape."""
    dims = b""
    for dim in shape:
        if isinstance(dim, int):
            dims += _bytes_field(1, _int_field(1, dim))
        elif isinstance(dim, str):
            dims += _bytes_field(1, _str_field(2, dim))
        else:
            dims += _bytes_field(1, b"")
    tensor_type = _int_field(1, FLOAT) + _bytes_field(2, dims)
    return _str_field(1, name) + _bytes_field(2, _bytes_field(1, tensor_type))


def attribute_ints(name: str, values: Iterable[int]) -> bytes:
    return _str_field(1, name) + b"".join(_int_field(8, v) for v in values) + _int_field(20, ATTR_INTS)


def attribute_int(name: str, value: int) -> bytes:
    return _str_field(1, name) + _int_field(3, value) + _int_field(20, ATTR_INT)


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], *attributes: bytes) -> bytes:
    out = b"".join(_str_field(1, i) for i in inputs) + b"".join(_str_field(2, o) for o in outputs)
    out += _str_field(3, f"{op_type}_{outputs[0]}") + _str_field(4, op_type)
    return out + b"".join(_bytes_field(5, a) for a in attributes)


def model(nodes, initializers, inputs, outputs, *, opset: int = 13, ir_version: int = 8) -> bytes:
    graph = b"".join(_bytes_field(1, n) for n in nodes) + _str_field(2, "tiny")
    graph += b"".join(_bytes_field(5, t) for t in initializers)
    graph += b"".join(_bytes_field(11, i) for i in inputs) + b"".join(_bytes_field(12, o) for o in outputs)
    opset_import = _str_field(1, "") + _int_field(2, opset)
    return (
        _int_field(1, ir_version)
        + _str_field(2, "vidguide-tests")
        + _bytes_field(7, graph)
        + _bytes_field(8, opset_import)
    )


def channel_mean_tagger(
    weights: np.ndarray,
    bias: np.ndarray,
    *,
    size: Dim = 448,
    batch: Dim = "batch",
    input_name: str = "input_1:0",
    output_name: str = "predictions_sigmoid",
) -> bytes:
    """A wd-v1-4-style tagger: NHWC float32 [batch, size, size, 3] -> sigmoid scores [batch, n_tags].

    scores = sigmoid(mean_over_pixels(image) @ weights + bias), weights [3, n_tags] with rows in the
    input's channel order (B, G, R for a wd tagger), so the scores check channel order and scale.
    """
    weights = np.asarray(weights, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    assert weights.ndim == 2 and weights.shape[0] == 3 and bias.shape == (weights.shape[1],)
    n_tags = weights.shape[1]
    nodes = [
        # opset 13 still takes ReduceMean's axes as an attribute (opset 18 moved it to an input)
        node("ReduceMean", [input_name], ["channel_mean"], attribute_ints("axes", [1, 2]), attribute_int("keepdims", 0)),
        node("MatMul", ["channel_mean", "weights"], ["logits_raw"]),
        node("Add", ["logits_raw", "bias"], ["logits"]),
        node("Sigmoid", ["logits"], [output_name]),
    ]
    return model(
        nodes,
        [tensor("weights", weights), tensor("bias", bias)],
        [value_info(input_name, [batch, size, size, 3])],
        [value_info(output_name, [batch, n_tags])],
    )
