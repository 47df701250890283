"""Run only where an NVIDIA GPU and onnxruntime-gpu exist (`pytest -m gpu`); skipped elsewhere.

On the CPU provider ONNX Runtime inserts casts to float32 around float16 nodes it has no kernel
for, so CPU validation proves an FP16 bundle is well formed, not its float16 arithmetic. These
tests run the FP16 arithmetic on CUDA.
"""

import numpy as np
import pytest

from fusionrt import Engine
from fusionrt.export import ExportOptions, export_bundle
from tests.conftest import random_feed

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda():
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("CUDAExecutionProvider not available")


def test_fp16_arithmetic_on_cuda_matches_fp32(cuda, tiny_checkpoint, tiny_bundle, tmp_path):
    fp16 = export_bundle(tiny_checkpoint, tmp_path / "fp16", ExportOptions(precision="fp16", target="cuda", accept_small_eval_set=True), progress=False)
    gpu = Engine.from_bundle(fp16, providers=["CUDAExecutionProvider", "CPUExecutionProvider"], strict=True)
    assert set(gpu.providers.values()) == {"CUDAExecutionProvider"}
    cpu32 = Engine.from_bundle(tiny_bundle, providers=["CPUExecutionProvider"])
    feed = random_feed(np.random.default_rng(7), 8, 17, 150)
    a, b = gpu.run(feed), cpu32.run(feed)
    assert np.isfinite(a["logits"]).all()
    np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-2, rtol=0)
