"""Fusion, FP16, INT8, precision per component, targets and the accuracy gate (tiny models)."""

import json
import re
import warnings

import numpy as np
import onnx
import pytest
from PIL import Image

from fusionrt import Engine, ExportError, ExportValidationError, InputError
from fusionrt.export import ExportOptions, export_bundle
from fusionrt.export import exporter, passes
from fusionrt.export.recipes import parse_precision
from fusionrt.export.validate import examples_needed
from tests.conftest import read_manifest

TEXT_FUSED = {"Attention": 2, "BiasGelu": 2, "EmbedLayerNormalization": 1, "SkipLayerNormalization": 4}


@pytest.fixture(scope="module")
def int8_bundle(tiny_checkpoint, tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 64 calibration samples < 100
        return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("int8") / "b", ExportOptions(precision="int8", accept_small_eval_set=True), progress=False)


@pytest.fixture(scope="module")
def fp16_bundle(tiny_checkpoint, tmp_path_factory):
    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("fp16") / "b", ExportOptions(precision="fp16", accept_small_eval_set=True), progress=False)


def test_fp32_fused_op_counts(tiny_bundle):
    g = read_manifest(tiny_bundle)["graphs"]
    assert g["text_encoder"]["fused_ops"] == TEXT_FUSED
    assert g["fusion_head"]["fused_ops"] == {"LayerNormalization": 3, "MultiHeadAttention": 1}
    assert g["image_encoder"]["fused_ops"] == {}
    assert g["fusion_head"]["recipe"]["fusion"] == {"cross_attention": "com.microsoft.MultiHeadAttention"}


def test_fp16_is_finite_within_tolerance_and_float16_inside(fp16_bundle):
    m = read_manifest(fp16_bundle)
    v = m["validation"]
    assert m["precision"] == {"text_encoder": "fp16", "image_encoder": "fp16", "fusion_head": "fp16"}
    assert v["tolerance"]["logits"] == 2e-2 and v["max_abs_error"] <= 1e-2
    assert m["graphs"]["text_encoder"]["fused_ops"] == TEXT_FUSED
    for name in ("text_encoder", "image_encoder", "fusion_head"):
        model = onnx.load(str(fp16_bundle / f"{name}.onnx"))
        kinds = {t.data_type for t in model.graph.initializer}
        assert onnx.TensorProto.FLOAT16 in kinds, name
        io = [x.type.tensor_type.elem_type for x in list(model.graph.input) + list(model.graph.output)]
        assert onnx.TensorProto.FLOAT16 not in io, name  # keep_io_types
        for t in model.graph.initializer:
            if t.data_type == onnx.TensorProto.FLOAT16:
                assert np.isfinite(onnx.numpy_helper.to_array(t)).all()


def test_fp16_clamps_out_of_range_constants(tmp_path):
    from onnx import helper

    fill = helper.make_tensor("fill", onnx.TensorProto.FLOAT, [1], [np.finfo(np.float32).min])
    node = helper.make_node("Add", ["x", "fill"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1])], [helper.make_tensor_value_info("y", 1, [1])], [fill])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "a.onnx"))
    info = passes.to_fp16(tmp_path / "a.onnx", tmp_path / "b.onnx")
    assert info["clamped_constants"] == 1
    (init,) = onnx.load(str(tmp_path / "b.onnx")).graph.initializer
    assert onnx.numpy_helper.to_array(init).tolist() == [-65504.0]


def test_int8_recipe_ops_and_agreement(int8_bundle):
    m = read_manifest(int8_bundle)
    assert m["precision"] == {"text_encoder": "int8", "image_encoder": "int8", "fusion_head": "fp32"}
    g = m["graphs"]
    # Static INT8 text encoder: attention, LayerNorm and GELU stay fused and float; the 2 x 6
    # MatMuls (QKV are inside Attention) take INT8 weights and calibrated INT8 activations.
    text = g["text_encoder"]["fused_ops"]
    assert text["Attention"] == 2 and "QAttention" not in text and text["SkipLayerNormalization"] == 4
    assert g["text_encoder"]["recipe"]["int8"]["mode"] == "static"
    model = onnx.load(str(int8_bundle / "text_encoder.onnx"))
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    weights = {i.name for i in model.graph.initializer}
    assert len(quantized - weights) >= 2 * 3, "activations of the MatMuls must be quantized too, not only weights"
    img = g["image_encoder"]["recipe"]["int8"]
    assert img["mode"] == "static" and img["format"] == "QDQ" and img["per_channel"] and img["calibration_samples"] == 64
    assert g["image_encoder"]["fused_ops"]["QuantizeLinear"] >= 5
    assert g["fusion_head"]["fused_ops"] == {"LayerNormalization": 3, "MultiHeadAttention": 1}
    v = m["validation"]
    assert v["tolerance"]["logits"] is None and v["agreement_data"] == "eval_data"
    # the gate (0.99, on the point estimate of 16 examples) let only 16/16 through; INT8 has no
    # logits tolerance, so these bounds are the check of its size: measured on an AMD EPYC (AVX2,
    # 7-bit weights) 0.114 on random inputs, 0.025 on the held-out examples
    assert v["top1_agreement"] == 1.0 and v["accuracy_delta"] == 0.0
    assert v["max_abs_error"] < 0.5 and v["max_abs_error_eval_data"]["logits"] < 0.1, v


def test_int8_dynamic_recipe_is_the_old_one(tiny_checkpoint, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 64 calibration samples < 100
        b = export_bundle(tiny_checkpoint, tmp_path / "b", ExportOptions(precision="int8-dynamic", validate=False), progress=False)
    m = read_manifest(b)
    assert m["precision"] == {"text_encoder": "int8-dynamic", "image_encoder": "int8", "fusion_head": "fp32"}
    assert m["graphs"]["text_encoder"]["fused_ops"]["QAttention"] == 2
    assert m["graphs"]["text_encoder"]["recipe"]["int8"]["mode"] == "dynamic"
    assert m["graphs"]["image_encoder"]["recipe"]["int8"]["mode"] == "static"


def test_int8_dynamic_is_refused_where_it_has_no_meaning():
    with pytest.raises(InputError, match="image=int8-dynamic"):
        parse_precision("image=int8-dynamic")
    with pytest.raises(InputError, match=r"--target tensorrt takes \['fp32', 'fp16', 'int8'\] per graph, not 'int8-dynamic'"):
        ExportOptions(precision="int8-dynamic", target="tensorrt")


def test_reduce_range_follows_the_cpu(monkeypatch):
    from fusionrt import cpu

    vnni = cpu.parse_cpuinfo("model name\t: X\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    avx2 = cpu.parse_cpuinfo("model name\t: Y\nflags\t\t: fpu avx2\n")
    assert vnni.int8_dot_product and vnni.flags == ("avx2", "avx512_vnni", "avx512f")
    assert not avx2.int8_dot_product and avx2.model == "Y"
    for info, expected in ((vnni, False), (avx2, True)):
        monkeypatch.setattr(cpu, "cpu_info", lambda info=info: info)
        assert ExportOptions().resolved_reduce_range is expected
        assert ExportOptions(reduce_range=True).resolved_reduce_range is True


def test_dynamic_quantizer_trap_is_handled(tiny_bundle, tmp_path, monkeypatch):
    """ORT's dynamic quantizer cannot type the fused graph's contrib outputs without a default type."""
    fused = tiny_bundle / "text_encoder.onnx"
    passes.quantize_dynamic_int8(fused, tmp_path / "ok.onnx", reduce_range=True)
    assert passes.op_counts(tmp_path / "ok.onnx", ["QAttention", "Attention"]) == {"QAttention": 2}
    from onnxruntime import quantization

    real = quantization.quantize_dynamic

    def without_default_type(*args, extra_options=None, **kwargs):
        extra = {k: v for k, v in (extra_options or {}).items() if k != "DefaultTensorType"}
        return real(*args, extra_options=extra, **kwargs)

    monkeypatch.setattr(quantization, "quantize_dynamic", without_default_type)
    with pytest.raises(Exception, match="Unable to find data type"):
        passes.quantize_dynamic_int8(fused, tmp_path / "bad.onnx", reduce_range=True)


def test_mixed_precision_per_component(tiny_checkpoint, tmp_path):
    b = export_bundle(tiny_checkpoint, tmp_path / "b", ExportOptions(precision="text=int8,image=fp16,head=fp32", accept_small_eval_set=True), progress=False)
    m = read_manifest(b)
    assert m["precision"] == {"text_encoder": "int8", "image_encoder": "fp16", "fusion_head": "fp32"}
    assert "QuantizeLinear" in m["graphs"]["text_encoder"]["fused_ops"]
    kinds = {t.data_type for t in onnx.load(str(b / "image_encoder.onnx")).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in kinds
    assert all(t.data_type != onnx.TensorProto.FLOAT16 for t in onnx.load(str(b / "fusion_head.onnx")).graph.initializer)
    engine = Engine.from_bundle(b)
    assert engine.logits(["great view"], [np.full((40, 40, 3), 90, np.uint8)]).shape == (1, 4)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("fp32", {"text_encoder": "fp32", "image_encoder": "fp32", "fusion_head": "fp32"}),
        ("int8", {"text_encoder": "int8", "image_encoder": "int8", "fusion_head": "fp32"}),
        ("image=fp16", {"text_encoder": "fp32", "image_encoder": "fp16", "fusion_head": "fp32"}),
        ("text=int8, head=int8", {"text_encoder": "int8", "image_encoder": "fp32", "fusion_head": "int8"}),
    ],
)
def test_parse_precision(spec, expected):
    assert parse_precision(spec) == expected


def test_the_recipe_table_names_one_pass_per_target_graph_and_precision():
    from fusionrt.export import recipes

    step = recipes.precision_step
    assert step("cpu", "text_encoder", "int8") == recipes.PrecisionStep("int8-static", ("MatMul",))
    assert step("cpu", "fusion_head", "int8") == recipes.PrecisionStep("int8-static", ("MatMul",))
    assert step("cpu", "image_encoder", "int8") == recipes.PrecisionStep("int8-static", image=True)  # every QDQ op, GPTQ
    # standard ops for TensorRT, its MatMuls INT8 as on cpu, every activation signed with zero point 0
    assert step("tensorrt", "text_encoder", "int8") == recipes.PrecisionStep("int8-static", ("MatMul",), symmetric=True)
    assert step("tensorrt", "image_encoder", "int8") == recipes.PrecisionStep("int8-static", image=True, symmetric=True)
    assert step("cuda", "text_encoder", "int8-dynamic").kind == "int8-dynamic"
    assert step("tensorrt", "image_encoder", "fp16").kind == "fp16-builder"
    assert step("cpu", "image_encoder", "fp16").kind == step("cuda", "image_encoder", "fp16").kind == "fp16"
    assert {step(t, g, "fp32").kind for t in recipes.TARGETS for g in ("text_encoder", "image_encoder", "fusion_head")} == {"copy"}
    assert recipes.TARGETS["cuda"].gelu_approximation and not recipes.TARGETS["cpu"].gelu_approximation
    assert not recipes.TARGETS["tensorrt"].fuse
    assert recipes.default_tolerance(parse_precision("image=fp16")) == {"logits": 2e-2, "modality_weights": 2e-2}
    assert recipes.default_tolerance(parse_precision("text=int8")) == {"logits": None, "modality_weights": None}
    assert recipes.default_tolerance(parse_precision("fp32")) == {"logits": 1e-4, "modality_weights": 1e-4}


@pytest.mark.parametrize("spec, match", [("fp8", "fp8"), ("audio=int8", "audio"), ("text=int4", "int4"),
                                         ("text=", "text= has no value"), ("text=int8,", "component '' is not one of"),
                                         # the later one silently won: the manifest said text_encoder fp16
                                         ("text=int8,image=fp32,head=fp32,text=fp16", "names text twice; give each component once")])
def test_parse_precision_errors(spec, match):
    with pytest.raises(InputError, match=match):
        ExportOptions(precision=spec)


def test_fusion_failure_names_the_graph(tiny_checkpoint, tmp_path, monkeypatch):
    import shutil

    # An optimizer that matches no pattern (as for graphs of other exporters) must stop the export.
    monkeypatch.setattr(passes, "fuse_text_encoder", lambda src, dst, *a: shutil.copyfile(src, dst) and {})
    with pytest.raises(ExportError, match=r"graph 'text_encoder': 0 fused attention op\(s\).*for 2 attention block\(s\)"):
        export_bundle(tiny_checkpoint, tmp_path / "b", ExportOptions(accept_small_eval_set=True), progress=False)
    assert not (tmp_path / "b").exists()


def test_unfused_head_is_detected(tiny_bundle, tmp_path):
    m = onnx.load(str(tiny_bundle / "fusion_head.onnx"))
    kept = [n for n in m.graph.node if n.op_type != "MultiHeadAttention"]
    del m.graph.node[:]
    m.graph.node.extend(kept)
    onnx.save(m, str(tmp_path / "h.onnx"))
    with pytest.raises(ExportError, match="graph 'fusion_head': 0 fused"):
        passes.check_attention_fused("fusion_head", tmp_path / "h.onnx", 1)


def _calibration_file(tmp_path, texts, color):
    img = tmp_path / "c.png"
    Image.new("RGB", (48, 48), color).save(img)
    lines = [json.dumps({"text": t, "image": "c.png", "label": "positive-warm"}) for t in texts]
    (tmp_path / "calib.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "calib.jsonl"


def test_calibration_pads_mixed_lengths_and_warns_below_100(tiny_checkpoint, tmp_path):
    from fusionrt.model import load_checkpoint

    path = _calibration_file(tmp_path, ["a", "what a lovely picture here", "great view here"] * 4, (200, 30, 30))
    ckpt = load_checkpoint(tiny_checkpoint)
    with pytest.warns(RuntimeWarning, match="only 12 calibration samples"):
        feeds = exporter._calibration_feeds(ckpt, {}, ExportOptions(calibration=str(path)))
    assert [f["input_ids"].shape for f in feeds] == [(8, 24), (4, 24)]  # padded to max_seq_len
    assert feeds[0]["attention_mask"].sum(1)[:3].tolist() == [3, 7, 5]


def test_accuracy_gates_fail_below_the_measured_values_and_list_both(tiny_checkpoint, tmp_path):
    # Calibrating on one flat grey picture clips the image features of real inputs: a real drop,
    # so a top-1 agreement with FP32 below 1.
    path = _calibration_file(tmp_path, ["great"] * 8, (128, 128, 128))
    opts = dict(precision="image=int8", calibration=str(path), accept_small_eval_set=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        b = export_bundle(tiny_checkpoint, tmp_path / "measured", ExportOptions(max_accuracy_drop=100, min_agreement=0.0, **opts), progress=False)
        v = read_manifest(b)["validation"]
        drop, agreement = -v["accuracy_delta"], v["top1_agreement"]
        assert drop > 0 and agreement < 1 and v["agreement_num_samples"] == 16
        agreed = round(agreement * 16)
        low, high = v["top1_agreement_ci95"]
        expected = (
            f"top-1 agreement with PyTorch FP32 on heldout.jsonl: {agreement:.2%} ({agreed} of 16, "
            f"95% Wilson interval {low:.2%}-{high:.2%}); its point estimate {agreement:.2%} < --min-agreement 1"
        )
        with pytest.raises(ExportValidationError, match="--min-agreement") as err:
            export_bundle(tiny_checkpoint, tmp_path / "agreement", ExportOptions(max_accuracy_drop=100, min_agreement=1.0, **opts), progress=False)
        assert err.value.failures == [expected]
        both = ExportOptions(max_accuracy_drop=drop / 2, min_agreement=(agreement + 1) / 2, **opts)
        with pytest.raises(ExportValidationError) as err:
            export_bundle(tiny_checkpoint, tmp_path / "gated", both, progress=False)
    accuracy_failure, agreement_failure = err.value.failures
    assert re.search(r"a drop of .* points > --max-accuracy-drop", accuracy_failure)
    # the lower bound is gated where 16 examples resolve the gate, else (accepted) the point estimate
    resolved = examples_needed(both.min_agreement) <= 16
    assert agreement_failure == expected.replace(
        f"its point estimate {agreement:.2%} < --min-agreement 1",
        f"its {'95% Wilson lower bound' if resolved else 'point estimate'} {low if resolved else agreement:.2%}"
        f" < --min-agreement {both.min_agreement:g}",
    )
    assert not (tmp_path / "gated").exists() and not (tmp_path / "agreement").exists()


def test_target_recorded_and_mismatch_warning(tiny_checkpoint, tmp_path):
    b = export_bundle(tiny_checkpoint, tmp_path / "b", ExportOptions(target="cuda", accept_small_eval_set=True), progress=False)
    m = read_manifest(b)
    assert m["target"] == "cuda"
    assert m["graphs"]["text_encoder"]["recipe"]["fusion"]["enable_gelu_approximation"] is True
    assert "FastGelu" in m["graphs"]["text_encoder"]["fused_ops"]
    with pytest.warns(RuntimeWarning, match="exported for target 'cuda'.*runs on CPUExecutionProvider"):
        Engine.from_bundle(b)


def test_tensorrt_target_uses_standard_ops_and_static_qdq(tiny_checkpoint, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        b = export_bundle(tiny_checkpoint, tmp_path / "b", ExportOptions(target="tensorrt", precision="int8", max_accuracy_drop=100, accept_small_eval_set=True), progress=False)
    m = read_manifest(b)
    for name in ("text_encoder", "image_encoder"):
        model = onnx.load(str(b / f"{name}.onnx"))
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, name
        assert m["graphs"][name]["recipe"]["int8"]["mode"] == "static"
        assert m["graphs"][name]["recipe"]["int8"]["activation_type"] == "int8 (symmetric)"
        # TensorRT takes INT8 Q/DQ only: signed, zero point 0 (weights and activations)
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points), name
    assert m["graphs"]["text_encoder"]["recipe"]["fusion"] == "left to TensorRT"
    text = onnx.load(str(b / "text_encoder.onnx"))
    quantized = {n.input[0] for n in text.graph.node if n.op_type == "QuantizeLinear"}
    produced = {o: n.op_type for n in text.graph.node for o in n.output}
    # only MatMul inputs are quantized (Softmax, LayerNorm, GELU and the MatMuls' outputs stay float)
    assert quantized and all(produced.get(q) != "MatMul" for q in quantized)
    readers = {n.output[0]: [r.op_type for r in text.graph.node if n.output[0] in r.input] for n in text.graph.node if n.op_type == "DequantizeLinear"}
    assert {op for ops in readers.values() for op in ops} == {"MatMul"}
