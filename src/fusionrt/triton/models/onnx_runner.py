"""Triton python model: run one of the bundle's ONNX graphs (``model.onnx`` beside this file) with
the onnxruntime package, for servers that have no onnxruntime backend; or, with
``parameters { key: "runtime" value: "openvino" }`` (bundles exported with ``--target openvino``),
with fusionrt's OpenVINO runtime at the graph's bundle precision (parameter ``precision``), the
same code the in-process Engine runs.

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
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]]
        self.openvino = None
        if parameters.get("runtime") == "openvino":
            self._init_openvino(args, folder, parameters)
        else:
            self._init_onnxruntime(args, folder, parameters)

    def _init_openvino(self, args, folder, parameters):
        from fusionrt.engine.openvino_runtime import OpenVINOOptions, OpenVINORuntime

        name = args["model_name"]
        options = OpenVINOOptions(inference_num_threads=int(parameters.get("intra_op_thread_count", "1")))
        self.openvino = OpenVINORuntime({name: folder / "model.onnx"}, {name: parameters.get("precision", "fp32")}, options).activate()
        self.graph = name
        missing = [n for n in self.inputs if n not in self.openvino.input_names[name]]
        missing += [n for n, _ in self.outputs if n not in self.openvino.output_names[name]]
        if missing:
            raise pb_utils.TritonModelException(f"{folder / 'model.onnx'} has no tensors {missing} named in config.pbtxt")
        pb_utils.Logger.log_info(f"{name}: OpenVINO runtime, {self.openvino.placements[name]}")

    def _init_onnxruntime(self, args, folder, parameters):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_thread_count", "1"))
        options.inter_op_num_threads = 1
        # No busy-waiting between calls: three encoder processes (and preprocess) share the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                device_id = int(args.get("model_instance_device_id", 0))
                providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
            else:
                pb_utils.Logger.log_warn(f"{args['model_name']}: KIND_GPU instance but this onnxruntime has no CUDA provider; running on CPU")
        self.session = ort.InferenceSession(str(folder / "model.onnx"), sess_options=options, providers=providers)
        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n in self.inputs if n not in graph_inputs] + [n for n, _ in self.outputs if n not in graph_outputs]
        if missing:
            raise pb_utils.TritonModelException(f"{folder / 'model.onnx'} has no tensors {missing} named in config.pbtxt")

    def execute(self, requests):
        columns = {name: [] for name in self.inputs}
        sizes = []
        for request in requests:
            for name in self.inputs:
                columns[name].append(pb_utils.get_input_tensor_by_name(request, name).as_numpy())
            sizes.append(len(columns[self.inputs[0]][-1]))
        try:
            feed = {name: np.concatenate(parts) for name, parts in columns.items()}  # (sum(sizes), ...)
            if self.openvino is not None:
                result = self.openvino.infer_graph(self.graph, feed)
                values = [result[name] for name, _ in self.outputs]
            else:
                values = self.session.run([name for name, _ in self.outputs], feed)
        except Exception as exc:
            error = pb_utils.TritonError(f"{'openvino' if self.openvino is not None else 'onnxruntime'} failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(value[start : start + n], dtype=dtype))
                for (name, dtype), value in zip(self.outputs, values)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses
