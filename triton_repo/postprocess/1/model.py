"""Triton python model ``postprocess``: logits, modality_weights -> PROBABILITIES, LABEL, MODALITY_WEIGHTS.

Inputs: ``logits`` (batch, num_labels) float32, ``modality_weights`` (batch, 2) float32.
Outputs: ``PROBABILITIES`` (batch, num_labels), the softmax of the logits (fusionrt's own,
computed in float64 like the engine's); ``LABEL`` (batch, 1) BYTES, the most probable label in
UTF-8; ``MODALITY_WEIGHTS`` (batch, 2), alpha text and image. Labels, in index order, are the
JSON list of ``parameters { key: "labels" }`` in config.pbtxt; output dtypes come from the config.
Source: ``fusionrt/triton/models/postprocess.py``, copied by ``fusionrt triton build``.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from fusionrt.prediction import softmax


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.labels = json.loads(config["parameters"]["labels"]["string_value"])
        self.dtypes = {
            name: pb_utils.triton_string_to_numpy(pb_utils.get_output_config_by_name(config, name)["data_type"])
            for name in ("PROBABILITIES", "MODALITY_WEIGHTS")
        }
        num_labels = int(pb_utils.get_output_config_by_name(config, "PROBABILITIES")["dims"][-1])
        if num_labels != len(self.labels):
            raise pb_utils.TritonModelException(f"PROBABILITIES has {num_labels} values but parameters.labels lists {len(self.labels)}")

    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "logits").as_numpy()  # (batch, num_labels)
            weights = pb_utils.get_input_tensor_by_name(request, "modality_weights").as_numpy()  # (batch, 2)
            probabilities = softmax(logits)  # (batch, num_labels) float64
            labels = np.array([[self.labels[i].encode("utf-8")] for i in probabilities.argmax(axis=-1)], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("PROBABILITIES", probabilities.astype(self.dtypes["PROBABILITIES"])),
                pb_utils.Tensor("LABEL", labels),
                pb_utils.Tensor("MODALITY_WEIGHTS", weights.astype(self.dtypes["MODALITY_WEIGHTS"])),
            ]))
        return responses
