#!/usr/bin/env python3
"""onnxruntime's side of `tools/bench/bench_qgemm.sh`: one MatMul of activations [m, k] (uniform in [-2, 2]) by weights
[k, n] (standard normal, as trained weights are bell-shaped), in FP32 and
quantised by `onnxruntime.quantization.quantize_dynamic(weight_type=QInt8)` (per-tensor dynamic u8 activations,
s8 weights: the graph becomes DynamicQuantizeLinear + MatMulInteger + rescale, or the fused
DynamicQuantizeMatMul), timed with 2 intra-op threads like quantstudio.

Usage: bench_qgemm_peer.py REPEAT  -> one JSON document on stdout (median ms per shape after 3 warm-up rounds;
FP32 and INT8 take turns in each round).
Needs numpy, onnx and onnxruntime (the versions used are printed).
"""
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

# Issue 7's shapes, then all-MiniLM-L6-v2's linear layers at 128 tokens and at 1 (as examples/bench_gemm.rs).
SHAPES = [(512, 768, 768), (128, 768, 3072), (1, 768, 3072),
          (128, 384, 384), (128, 384, 1536), (128, 1536, 384), (1, 384, 384), (1, 384, 1536), (1, 1536, 384)]


def matmul_model(path: Path, k: int, n: int, seed: int) -> None:
    # Normally distributed like trained weights (and like quantstudio's side of the benchmark).
    weights = np.random.default_rng(seed).standard_normal(size=(k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def medians_ms(sessions, feed, repeat: int) -> list:
    """Median ms of each session over `repeat` rounds after 3 warm-up rounds; the sessions take turns in a round."""
    for _ in range(3):
        for session in sessions:
            session.run(None, feed)
    times = [[] for _ in sessions]
    for _ in range(repeat):
        for session, session_times in zip(sessions, times):
            start = time.perf_counter()
            session.run(None, feed)
            session_times.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def main() -> None:
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for m, k, n in SHAPES:
            fp32_path, int8_path = Path(tmp) / f"fp32-{k}-{n}.onnx", Path(tmp) / f"int8-{k}-{n}.onnx"
            matmul_model(fp32_path, k, n, seed=2)
            quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
            feed = {"a": np.random.default_rng(1).uniform(-2, 2, size=(m, k)).astype(np.float32)}
            providers = ["CPUExecutionProvider"]
            fp32 = ort.InferenceSession(str(fp32_path), options, providers=providers)
            int8 = ort.InferenceSession(str(int8_path), options, providers=providers)
            ops = sorted({node.op_type for node in onnx.load(str(int8_path)).graph.node})
            fp32_ms, int8_ms = medians_ms([fp32, int8], feed, repeat)
            results.append(
                {
                    "shape": f"{m}x{k}x{n}",
                    "fp32_ms": fp32_ms,
                    "int8_dynamic_ms": int8_ms,
                    "int8_ops": ops,
                }
            )
    print(
        json.dumps(
            {
                "tool": "onnxruntime",
                "onnxruntime": ort.__version__,
                "onnx": onnx.__version__,
                "numpy": np.__version__,
                "threads": 2,
                "repeat": repeat,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
