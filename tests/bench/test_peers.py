"""The peers of ``fusionrt bench --checkpoint`` (issue 16.5) on the tiny checkpoint: each builds,
runs in both modes and answers like PyTorch FP32 within its precision's tolerance."""

import json

import numpy as np
import pytest

from fusionrt.bench.runner import _inputs, pytorch_contender, run_benchmark
from fusionrt.cpu import cpu_info
from fusionrt.samples import DEMO_PAIRS

# max |logit - PyTorch FP32| on the tiny model's logits (|logits| < 0.65 on these inputs), per
# precision: f32, OpenVINO's kernels reorder sums; bf16 (8-bit mantissa) measured 1.9e-3 with
# OpenVINO, 2.7e-3 with autocast; NNCF INT8 measured 0.18-0.19 (32 or all calibration examples;
# argmax unchanged on these inputs). The default checkpoint, for scale: bf16 2.2e-2, INT8 1.1.
TOLERANCE = {"f32": 1e-4, "bf16": 1e-2, "int8": 0.3}
BF16 = cpu_info().bf16


@pytest.fixture(scope="module")
def inputs():
    return _inputs(4)  # 4 real photographs with captions of different lengths


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, inputs):
    return pytorch_contender(tiny_checkpoint, 1).logits(*inputs)  # (4, num_labels) float32


@pytest.fixture(scope="module")
def converted(tiny_checkpoint):
    pytest.importorskip("openvino")
    from fusionrt.bench.peers import convert_checkpoint

    return convert_checkpoint(tiny_checkpoint)


def _precision(name: str) -> str:
    return "bf16" if "bf16" in name else "f32"


def test_openvino_default_peer_runs_and_agrees(converted, inputs, reference):
    from fusionrt.bench.peers import openvino_peer_contender

    serial = openvino_peer_contender(converted, 1)
    pooled = openvino_peer_contender(converted, 1, "pooled")
    assert serial.name == f"openvino default (from pytorch, {'bf16' if BF16 else 'f32'})"
    assert pooled.name == serial.name + ", pooled decoding" and pooled.model is None
    logits = serial.logits(*inputs)
    assert logits.shape == reference.shape and logits.dtype == np.float32
    assert np.abs(logits - reference).max() < TOLERANCE[_precision(serial.name)]
    assert np.array_equal(serial.model(*inputs)(), logits)
    probs = serial.pipeline(*inputs)()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert np.array_equal(probs.argmax(1), reference.argmax(1))
    # the serial pipeline decodes as users write it (Pillow's convert("RGB")), the pooled one with
    # fusionrt's decoding: the same pixels but for the RGBA logo (flattened differently)
    rgb = [i for i, (_, f) in enumerate(DEMO_PAIRS[:4]) if f != "logo.png"]
    np.testing.assert_allclose(pooled.pipeline(*inputs)()[rgb], probs[rgb], rtol=1e-5, atol=1e-6)


def test_user_pixels_are_pillow_and_numpy_as_users_write_them(tiny_checkpoint, inputs):
    from PIL import Image

    from fusionrt.bench.peers import user_pixels
    from fusionrt.model import load_checkpoint

    processor = load_checkpoint(tiny_checkpoint).image_processor
    _, images = inputs
    for image in images:
        x = user_pixels(image, processor)
        assert x.shape == (3, *processor.output_hw) and x.dtype == np.float32
    # an exact check on a 300x200 image with the tiny model's sizes (short side 40, crop 32x32):
    # resize to 60x40, crop rows 4:36 and columns 14:46
    assert processor.size == {"shortest_edge": 40} and processor.crop_size == {"height": 32, "width": 32}
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    import io

    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    want = np.asarray(img.resize((60, 40), Image.Resampling(processor.resample)), np.float32)[4:36, 14:46] / 255.0
    want = (want - np.asarray(processor.image_mean, np.float32)) / np.asarray(processor.image_std, np.float32)
    np.testing.assert_allclose(user_pixels(buffer.getvalue(), processor), want.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)
    # a fixed size without crop (ViT's): the whole image squashed to 32x48, fusionrt's own pixels
    import dataclasses

    squash = dataclasses.replace(processor, size={"height": 32, "width": 48}, do_center_crop=False)
    np.testing.assert_allclose(user_pixels(buffer.getvalue(), squash), squash.process_one(buffer.getvalue()), rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # NNCF post-training quantization
def test_nncf_peer_quantizes_and_agrees(converted, inputs, reference):
    pytest.importorskip("nncf")
    from fusionrt.bench.peers import nncf_peer_contender

    peer = nncf_peer_contender(converted, 1, subset_size=32)
    assert peer.name.startswith("openvino nncf int8 (from pytorch, rest ")
    logits = peer.logits(*inputs)
    assert 0 < np.abs(logits - reference).max() < TOLERANCE["int8"]
    assert np.array_equal(logits.argmax(1), reference.argmax(1))
    assert peer.pipeline(*inputs)().shape == reference.shape


@pytest.mark.skipif(not BF16, reason="this CPU has no AVX512-BF16 or AMX-BF16")
def test_pytorch_bf16_autocast_peer(tiny_checkpoint, inputs, reference):
    from fusionrt.bench.peers import pytorch_bf16_contender

    peer = pytorch_bf16_contender(tiny_checkpoint, 1)
    logits = peer.logits(*inputs)
    assert logits.dtype == np.float32
    assert 0 < np.abs(logits - reference).max() < TOLERANCE["bf16"]  # bf16 really ran: not bit-equal
    assert peer.model(*inputs)().dtype.is_floating_point


def test_pytorch_bf16_refused_without_bf16(tiny_checkpoint, monkeypatch):
    import fusionrt.cpu
    from fusionrt.bench.peers import PeerUnavailableError, pytorch_bf16_contender

    monkeypatch.setattr(fusionrt.cpu, "cpu_info", lambda: fusionrt.cpu.CPUInfo("Old CPU", "x86_64", ("avx2",)))
    with pytest.raises(PeerUnavailableError, match="Old CPU.*avx512_bf16"):
        pytorch_bf16_contender(tiny_checkpoint, 1)


@pytest.mark.slow  # a whole benchmark run with the OpenVINO peers
def test_peers_in_a_benchmark_run(tiny_bundle, tiny_checkpoint, tmp_path):
    pytest.importorskip("openvino")
    data = run_benchmark([tiny_bundle], tmp_path, checkpoint=tiny_checkpoint, batch_sizes=(2,), threads=1,
                         duration_s=0.05, progress=False, inputs=("photos",))
    saved = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["contender"], r["mode"]): r for r in saved["results"]}
    ov_name = next(n for n, _ in rows if n.startswith("openvino default"))
    assert (ov_name, "model") in rows and (ov_name, "pipeline") in rows
    assert (ov_name + ", pooled decoding", "pipeline") in rows
    assert (ov_name + ", pooled decoding", "model") not in rows
    assert rows[("pytorch eager (fp32)", "model")]["max_abs_logit_error"] == 0.0
    assert rows[("fp32 (fp32)", "model")]["max_abs_logit_error"] < 1e-4
    assert rows[(ov_name, "model")]["max_abs_logit_error"] < TOLERANCE[_precision(ov_name)]
    nncf_found = any(n.startswith("openvino nncf int8") for n, _ in rows)
    assert nncf_found != ("openvino nncf int8" in saved["skipped"])
    assert (("pytorch eager (bf16 autocast)", "model") in rows) == BF16
    assert saved["peaks"]["int8"]["measured_gops"]["onnxruntime matmulinteger"] > 0
    assert saved["peaks"]["int8"]["measured_gops"]["openvino int8 matmul"] > 0
    assert ("bf16" in saved["peak_gflops_by_precision"]) == BF16
    # the roofline on this machine: every graph of the FP32 bundle within the measured or
    # theoretical peak of its precision (a graph above it gets no percentage: a wrong FLOP count or peak)
    for g, r in saved["roofline"]["fp32 (fp32)"]["2"].items():
        assert r["peak"] == "fp32" and r["peak_name"].startswith("fp32 ") and r["percent_of_peak"] is not None, (g, r)
    for precision, peak in saved["peaks"].items():
        if precision == "bf16" and not BF16:  # no bf16 kernel to measure (an AVX2-only AMD Zen 3)
            assert peak["measured_gops"] == {} and peak["used"].startswith("bf16 theoretical"), peak
        else:
            assert peak["best_measured_gops"] == max(peak["measured_gops"].values()) > 0, precision
    # the x peer ratios are against OpenVINO's default with its pipeline as users write it
    peer_rows = [r for r in saved["results"] if r["reference_peer"]]
    assert {r["contender"] for r in peer_rows} == {ov_name} and all(r["speedup_vs_peer"] == 1.0 for r in peer_rows)
    assert rows[("fp32 (fp32)", "pipeline")]["speedup_vs_peer"] > 0
    report = (tmp_path / "report.md").read_text()
    assert f"| {ov_name} | photos | pipeline | 2 |" in report and "| peak | % of peak |" in report
    assert data["skipped"] == saved["skipped"]



def test_roofline_peak_follows_the_precision_that_runs():
    from types import SimpleNamespace

    from fusionrt.bench.runner import _peak_of

    bundle = SimpleNamespace(precision={"text_encoder": "int8", "image_encoder": "fp16", "fusion_head": "fp32"})
    on_ort = SimpleNamespace(bundle=bundle, runtime=SimpleNamespace())
    assert {g: _peak_of(on_ort, g) for g in bundle.precision} == {"text_encoder": "int8", "image_encoder": "fp32", "fusion_head": "fp32"}
    ov = SimpleNamespace(inference_precisions={"text_encoder": "bf16", "image_encoder": "bf16", "fusion_head": "f32"})
    on_ov = SimpleNamespace(bundle=bundle, runtime=ov)  # OpenVINO computes the float ops in bf16
    assert {g: _peak_of(on_ov, g) for g in bundle.precision} == {"text_encoder": "int8", "image_encoder": "bf16", "fusion_head": "fp32"}
