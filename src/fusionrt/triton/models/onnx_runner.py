"""Triton python model: run one of the bundle's ONNX graphs (``model.onnx`` beside this file) with
the onnxruntime package, for servers that have no onnxruntime backend; or, with
``parameters { key: "runtime" value: "openvino" }`` (bundles exported with ``--target openvino``),
with fusionrt's OpenVINO runtime at the graph's bundle precision (parameter ``precision``): the
runtimes of the in-process Engine, built by :func:`fusionrt.engine.runtimes.build_runtime`.

Inputs and outputs are the graph's, named and typed as in config.pbtxt; output dtypes are read
from the config. The requests of a batch are concatenated along axis 0, run as one session call
and split back, so the dynamic batcher's merging pays off as it does with the onnxruntime backend.
``parameters { key: "intra_op_thread_count" }`` sets ONNX Runtime's intra-op threads; they do
not spin between calls (the models of the ensemble share the cores). On KIND_GPU
instances the CUDA execution provider is used when this onnxruntime has it.
Source: ``fusionrt/triton/models/onnx_runner.py``, copied by ``fusionrt triton build``.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        from fusionrt.engine.runtimes import build_runtime
        from fusionrt.engine.session import EngineOptions, SessionOptions

        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]]
        self.graph = args["model_name"]
        threads = int(parameters.get("intra_op_thread_count", "1"))
        # No busy-waiting between calls (SessionOptions' default): the encoder processes share the cores.
        options = EngineOptions(cpu=SessionOptions(intra_op_num_threads=threads, inter_op_num_threads=1)).with_threads(threads)
        kind = parameters.get("runtime", "onnxruntime")
        self.runtime = build_runtime({self.graph: folder / "model.onnx"}, {self.graph: parameters.get("precision", "fp32")},
                                     kind, options, self._providers(args, kind)).activate()
        graph_inputs, graph_outputs = self.runtime.input_names[self.graph], self.runtime.output_names[self.graph]
        missing = [n for n in self.inputs if n not in graph_inputs] + [n for n, _ in self.outputs if n not in graph_outputs]
        if missing:
            raise pb_utils.TritonModelException(f"{folder / 'model.onnx'} has no tensors {missing} named in config.pbtxt")
        pb_utils.Logger.log_info(f"{self.graph}: runtime {kind}, {self.runtime.placements[self.graph].describe()}")

    def _providers(self, args, kind):
        """ONNX Runtime's providers: CUDA first on a KIND_GPU instance when this onnxruntime has it."""
        from fusionrt.engine.runtimes import Providers

        if kind != "onnxruntime" or args.get("model_instance_kind") != "GPU":
            return Providers()
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            pb_utils.Logger.log_warn(f"{self.graph}: KIND_GPU instance but this onnxruntime has no CUDA provider; running on CPU")
            return Providers()
        device_id = str(int(args.get("model_instance_device_id", 0)))
        return Providers(("CUDAExecutionProvider", "CPUExecutionProvider"), {self.graph: {"CUDAExecutionProvider": {"device_id": device_id}}})

    def execute(self, requests):
        columns = {name: [] for name in self.inputs}
        sizes = []
        for request in requests:
            for name in self.inputs:
                columns[name].append(pb_utils.get_input_tensor_by_name(request, name).as_numpy())
            sizes.append(len(columns[self.inputs[0]][-1]))
        try:
            feed = {name: np.concatenate(parts) for name, parts in columns.items()}  # (sum(sizes), ...)
            result = self.runtime.infer_graph(self.graph, feed)
            values = [result[name] for name, _ in self.outputs]
        except Exception as exc:
            # One TritonError per response: the python backend frees each response's error, and one
            # object shared by the responses of a batch crashed tritonserver (SIGSEGV) under
            # concurrent failing requests.
            message = f"{self.runtime.name} failed: {exc}"
            return [pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message)) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(value[start : start + n], dtype=dtype))
                for (name, dtype), value in zip(self.outputs, values)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses
