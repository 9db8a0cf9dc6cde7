"""Quantization under careless or degenerate input: named errors, warnings, right answers.

Regression tests for the reliability issue: dict batches matched by input name (4),
pipeline strings through ``slimfx.quantize`` (5), empty / non-finite calibration ranges
(9), and the arguments of ``quantize`` / ``calibrate`` / ``report``.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

import slimfx
from slimfx.errors import CalibrationError, PassError, QuantizationError
from slimfx.ir import Graph
from slimfx.passes.quant import QConfig, prepare_ptq
from slimfx.passes.quant.observers import EPS
from slimfx.passes.quant.qconfig import OpQConfig, QScheme

CALIB_LOG = "slimfx.passes.quant.calibrate"


class TwoInputs(nn.Module):
    """``fa(a) + fb(b)``: two graph inputs, ``a`` and ``b``."""

    def __init__(self) -> None:
        super().__init__()
        self.fa = nn.Linear(4, 3)
        self.fb = nn.Linear(4, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fa(a) + self.fb(b)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def two() -> tuple[Graph, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    a = torch.rand(2, 4)  # [0, 1)
    b = torch.randn(2, 4) * 100  # about [-200, 200]
    return slimfx.trace(TwoInputs().eval(), (a, b)), a, b


@pytest.fixture(scope="module")
def cnn() -> tuple[Graph, list[torch.Tensor]]:
    torch.manual_seed(0)
    data = [torch.randn(2, 1, 6, 6) for _ in range(3)]
    return slimfx.trace(SmallCNN().eval(), (data[0],)), data


def _input_ranges(g: Graph, batches: list) -> dict[str, tuple]:
    p = prepare_ptq(g)
    slimfx.calibrate(p, batches, progress=False)
    return {n.inputs[0].name: (n.attrs["min_val"], n.attrs["max_val"])
            for n in p.find("observer") if n.inputs[0].name in ("a", "b")}


def _input_scale(q: Graph, name: str) -> float:
    (node,) = [n for n in q.find("quantize") if n.inputs[0].name == name]
    return node.attrs["scale"][0]


# ----------------------------------------------------------- 4: dict batches by name
def test_dict_batches_are_matched_by_input_name_in_any_key_order(two) -> None:
    g, a, b = two
    assert [v.name for v in g.inputs] == ["a", "b"]
    ab = _input_ranges(g, [{"a": a, "b": b}])
    ba = _input_ranges(g, [{"b": b, "a": a}])
    assert ab == ba == _input_ranges(g, [(a, b)])
    assert ab["a"] == ((float(a.min()),), (float(a.max()),))
    assert ab["b"] == ((float(b.min()),), (float(b.max()),))
    qa = slimfx.quantize(g, [{"a": a, "b": b}])
    qb = slimfx.quantize(g, [{"b": b, "a": a}])
    assert _input_scale(qa, "a") == _input_scale(qb, "a") == pytest.approx(
        (float(a.max()) - 0.0) / 255)  # range widened to contain 0
    assert _input_scale(qa, "b") == _input_scale(qb, "b") == pytest.approx(
        (float(b.max()) - float(b.min())) / 255)


def test_dict_batch_with_unknown_or_missing_names_lists_the_graph_inputs(two) -> None:
    g, a, b = two
    p = prepare_ptq(g)
    with pytest.raises(CalibrationError, match=r"unknown input name\(s\) 'labels'.*%a, %b"):
        slimfx.calibrate(p, [{"a": a, "b": b, "labels": a}], progress=False)
    with pytest.raises(CalibrationError, match=r"missing 'b'.*%a, %b"):
        slimfx.calibrate(p, [{"a": a}], progress=False)
    with pytest.raises(CalibrationError, match=r"unknown input name\(s\) 'x'.*missing 'a'"):
        slimfx.calibrate(p, [{"x": a, "b": b}], progress=False)


def test_report_accepts_dict_batches_by_name(two) -> None:
    g, a, b = two
    assert slimfx.report(g, [{"b": b, "a": a}]) == slimfx.report(g, [(a, b)])


# ------------------------------------------------ 5: any pipeline string in quantize
PREPARE = "remove-identity,fold-bn,fuse-activation,dce,insert-observers"


def _ops(g: Graph) -> set[str]:
    return {n.op.name for n in g.nodes}


def test_pipeline_string_with_observers_is_calibrated_and_converted(cnn) -> None:
    g, data = cnn
    ref = slimfx.quantize(g, data)
    x = data[0]
    for text in (PREPARE, PREPARE + ",convert-int8", PREPARE + ",quantize-dequantize"):
        q = slimfx.quantize(g, data, text)
        assert "observer" not in _ops(q) and {"qconv2d", "qlinear"} <= _ops(q), text
        with torch.no_grad():  # the same integer program as ptq-int8
            assert torch.equal(slimfx.to_torch(q)(x), slimfx.to_torch(ref)(x)), text


def test_short_pipeline_string_quantizes_and_tracks_float(cnn) -> None:
    g, data = cnn
    q = slimfx.quantize(g, data, "fold-bn,insert-observers")
    assert {"qconv2d", "qlinear"} <= _ops(q) and not _ops(q) & {"observer", "conv2d"}
    with torch.no_grad():
        f, i = slimfx.to_torch(g)(data[0]), slimfx.to_torch(q)(data[0])
    assert not torch.equal(f, i)  # not the float graph
    assert torch.nn.functional.cosine_similarity(f.flatten(), i.flatten(), dim=0) > 0.98


def test_pipeline_string_in_qdq_form(cnn) -> None:
    g, data = cnn
    q = slimfx.quantize(g, data, "fold-bn,insert-observers", form="qdq")
    assert {"quantize", "dequantize", "conv2d"} <= _ops(q)
    assert not _ops(q) & {"observer", "qconv2d", "qlinear"}
    with pytest.raises(QuantizationError, match="form='qdq'.*convert-int8"):
        slimfx.quantize(g, data, PREPARE + ",convert-int8", form="qdq")


def test_converting_without_observers_is_an_error_naming_the_missing_pass(cnn) -> None:
    g, data = cnn
    for text, pass_name in (("fold-bn,convert-int8", "convert-int8"),
                            ("fold-bn,quantize-dequantize", "quantize-dequantize"),
                            ("convert-int8,insert-observers", "convert-int8")):
        with pytest.raises(QuantizationError,
                           match=rf"pass '{pass_name}' .*add 'insert-observers' before"):
            slimfx.quantize(g, data, text)


def test_observers_without_data_or_selecting_nothing_are_errors(cnn) -> None:
    g, data = cnn
    with pytest.raises(QuantizationError, match="inserts observers.*needs calibration data"):
        slimfx.quantize(g, None, "fold-bn,insert-observers")
    with pytest.raises(QuantizationError, match="selects no node to quantize.*conv2d"):
        slimfx.quantize(g, data, "insert-observers{exclude_ops=[conv2d,linear]}")
    with pytest.raises(QuantizationError, match="selects no node to quantize"):
        slimfx.quantize(g, data, qconfig=QConfig(by_op={"conv2d": None, "linear": None}))


def test_options_that_need_static_int8_are_refused_elsewhere(cnn) -> None:
    g, data = cnn
    with pytest.raises(QuantizationError, match="form='qdq' applies to static int8"):
        slimfx.quantize(g, data, "fp16", form="qdq")
    with pytest.raises(QuantizationError, match="bias_correction=True applies to static int8"):
        slimfx.quantize(g, data, "dynamic-int8", bias_correction=True)


def test_bias_correction_pass_in_a_pipeline_string_gets_the_data(cnn) -> None:
    g, data = cnn
    q = slimfx.quantize(g, iter(data), PREPARE + ",bias-correction")
    ref = slimfx.quantize(g, data, bias_correction=True)
    with torch.no_grad():
        assert torch.equal(slimfx.to_torch(q)(data[0]), slimfx.to_torch(ref)(data[0]))


# --------------------------------------------- 9: empty ranges and non-finite data
def test_all_zero_data_warns_and_uses_the_smallest_scale(cnn, caplog) -> None:
    g, _ = cnn
    with caplog.at_level(logging.WARNING, logger=CALIB_LOG):
        q = slimfx.quantize(g, [torch.zeros(2, 1, 6, 6)])
    text = caplog.text
    assert "observer %x.obs (of %x" in text and "saw only zeros, scale 2**-23" in text
    assert _input_scale(q, "x") == EPS


def test_constant_data_warns_with_the_scale_used(cnn, caplog) -> None:
    g, _ = cnn
    with caplog.at_level(logging.WARNING, logger=CALIB_LOG):
        q = slimfx.quantize(g, [torch.full((2, 1, 6, 6), 0.5)])
    assert "observer %x.obs (of %x" in caplog.text
    assert "saw only the value 0.5, scale 0.00196078 from the range [0, 0.5]" in caplog.text
    assert _input_scale(q, "x") == pytest.approx(0.5 / 255)


def test_real_data_does_not_warn(cnn, caplog) -> None:
    g, data = cnn
    with caplog.at_level(logging.WARNING, logger=CALIB_LOG):
        slimfx.quantize(g, data)
    assert "empty range" not in caplog.text


@pytest.mark.parametrize("bad,what", [(math.nan, "1 NaN and 0 inf"),
                                      (math.inf, "0 NaN and 1 inf"),
                                      (-math.inf, "0 NaN and 1 inf")])
def test_non_finite_data_names_the_input(two, bad, what) -> None:
    g, a, b = two
    b = b.clone()
    b[1, 2] = bad
    with pytest.raises(CalibrationError, match=rf"batch 1: input %b has {what} values"):
        slimfx.quantize(g, [(a, a), (a, b)])
    with pytest.raises(CalibrationError, match=rf"batch 0: input %b has {what}"):
        slimfx.report(g, [{"a": a, "b": b}])


# ------------------------------------------------------------- careless arguments
def test_report_without_data(cnn) -> None:
    g, _ = cnn
    with pytest.raises(CalibrationError, match="slimfx.report: data is None"):
        slimfx.report(g, None)
    with pytest.raises(CalibrationError, match="slimfx.report of graph @.* got no data"):
        slimfx.report(g, [])


def test_already_quantized_graph_is_refused(cnn) -> None:
    g, data = cnn
    q = slimfx.quantize(g, data)
    with pytest.raises(QuantizationError, match="already has observers or quantize nodes"):
        slimfx.quantize(q, data)
    with pytest.raises(QuantizationError, match="already has observers or quantize nodes"):
        slimfx.report(q, data)


def test_torch_module_instead_of_a_graph() -> None:
    model = SmallCNN()
    x = torch.randn(2, 1, 6, 6)
    with pytest.raises(QuantizationError, match=r"slimfx.quantize: graph is a torch module "
                       r"\(SmallCNN\).*slimfx.trace\(model, example_inputs\)"):
        slimfx.quantize(model, [x])
    with pytest.raises(QuantizationError, match=r"slimfx.report: graph is a torch module"):
        slimfx.report(model, [x])
    with pytest.raises(CalibrationError, match=r"slimfx.calibrate: graph is a torch module"):
        slimfx.calibrate(model, [x])
    with pytest.raises(QuantizationError, match="graph must be a slimfx Graph.*got str"):
        slimfx.quantize("model.pt", [x])


@pytest.mark.parametrize("form", ["int4", "INT8", "fp16", None])
def test_unknown_form_lists_the_valid_forms(cnn, form) -> None:
    g, data = cnn
    with pytest.raises(QuantizationError, match=rf"form={form!r} is not a form; choose 'int8'"
                       r".*'qdq'"):
        slimfx.quantize(g, data, form=form)


def test_bad_pipeline_and_qconfig_arguments(cnn) -> None:
    g, data = cnn
    with pytest.raises(QuantizationError, match="data is the string 'ptq-int8'.*pipeline"):
        slimfx.quantize(g, "ptq-int8")
    with pytest.raises(QuantizationError, match="pipeline must be a pipeline string.*got int"):
        slimfx.quantize(g, data, 8)
    with pytest.raises(QuantizationError, match="qconfig must be a QConfig.*got str"):
        slimfx.quantize(g, data, qconfig="x86")
    with pytest.raises(QuantizationError, match="qconfig must be a QConfig.*got dict"):
        slimfx.report(g, data, {"conv": None})


@pytest.mark.parametrize("data,message", [
    (None, "needs calibration data"),
    ([], r"calibration of graph @\w+ got no data; pass an iterable"),
    (torch.randn(2, 1, 6, 6), r"data is a single tensor of shape \(2, 1, 6, 6\).*\[x\]"),
    ({"x": torch.randn(2, 1, 6, 6)}, r"data is a single dict \(one batch\).*\[batch\]"),
    (42, "data must be an iterable of batches.*got int"),
    ([(torch.randn(2, 1, 6, 6), torch.zeros(2), torch.zeros(2))],
     "batch 0 has 3 tensors but graph.*input_fn="),
    ([torch.randn(2, 1, 6, 6, dtype=torch.float64)],
     r"input %x has dtype torch.float64 but the graph takes f32\[N,1,6,6\].*torch.float32"),
    ([torch.randint(0, 9, (2, 1, 6, 6))], "input %x has dtype torch.int64"),
    ([torch.randn(3, 1, 5, 6)], r"input %x has shape \(3, 1, 5, 6\)"),
    (["x.png"], "batch 0 is a str; a batch is a tensor"),
    ([(None,)], "input %x is a NoneType, not a tensor"),
])
def test_bad_calibration_data(cnn, data, message) -> None:
    g, _ = cnn
    error = QuantizationError if data is None else CalibrationError
    with pytest.raises(error, match=message):
        slimfx.quantize(g, data)


def test_exhausted_generator_says_it_was_consumed(cnn) -> None:
    g, data = cnn
    gen = (x for x in data)
    slimfx.quantize(g, gen)
    with pytest.raises(CalibrationError, match="generator objects can be read only once.*"
                       "consumed already; pass a list"):
        slimfx.quantize(g, gen)


@pytest.mark.parametrize("n", [0, -1, 1.5, "2", True])
def test_bad_num_batches(cnn, n) -> None:
    g, data = cnn
    with pytest.raises(CalibrationError, match=rf"num_batches={n!r} must be a positive int"):
        slimfx.quantize(g, data, num_batches=n)


def test_num_batches_reads_no_more_than_asked(cnn) -> None:
    g, data = cnn
    taken = []

    def batches():
        for x in data:
            taken.append(x)
            yield x

    q = slimfx.quantize(g, batches(), num_batches=2)
    assert len(taken) == 2
    ref = slimfx.quantize(g, data[:2])
    with torch.no_grad():
        assert torch.equal(slimfx.to_torch(q)(data[2]), slimfx.to_torch(ref)(data[2]))


def test_calibrate_refuses_a_graph_without_observers(cnn) -> None:
    g, data = cnn
    with pytest.raises(CalibrationError, match="no observer nodes.*insert-observers"):
        slimfx.calibrate(g, data, progress=False)
    with pytest.raises(PassError, match="no statistics"):
        slimfx.Pipeline("ptq-int8,convert-int8")(g)  # outside quantize nothing calibrates


# ----------------------------------------------------------------------- QConfig construction
@pytest.mark.parametrize("make, message", [
    (lambda: QConfig([[1]]), r"default must be an OpQConfig or None.*got list"),
    (lambda: QConfig("x86"), r"default must be an OpQConfig or None.*got str"),
    (lambda: QConfig(by_op={"linear": 3}), r"by_op\['linear'\] must be an OpQConfig"),
    (lambda: QConfig(by_op=[("linear",)]), r"by_op entry \('linear',\) is not a \(name"),
    (lambda: QConfig(by_op=5), r"by_op must map names to OpQConfig.*got int"),
    (lambda: QConfig(by_name={"fc.*": "int8"}), r"by_name\['fc\.\*'\] must be an OpQConfig"),
    (lambda: QConfig(by_name={3: None}), r"by_name entry \(3, None\) is not a \(name"),
    (lambda: QConfig(exclude=[1]), r"exclude entry 1 is not a string"),
    (lambda: QConfig(exclude_ops=None), r"exclude_ops must be a string or a list.*NoneType"),
    (lambda: QScheme(qmin=1.5), r"qmin must be an integer, got 1.5"),
    (lambda: QScheme(qmax="127"), r"qmax must be an integer, got '127'"),
    (lambda: QScheme(bins=True), r"bins must be an integer, got True"),
    (lambda: QScheme(symmetric="yes"), r"symmetric must be True or False, got 'yes'"),
    (lambda: QScheme(per_channel=1), r"per_channel must be True or False, got 1"),
    (lambda: QScheme(observer="max"), r"observer='max' is not known; choose one of minmax"),
    (lambda: QScheme(method="kl"), r"method='kl' is not known"),
    (lambda: QScheme(percentile=math.nan), r"percentile must be a finite number, got nan"),
    (lambda: QScheme(averaging_constant=0), r"averaging_constant must lie in \(0, 1\]"),
    (lambda: QScheme(dtype=8), r"dtype 8 is not supported; use i8 or u8"),
    (lambda: OpQConfig(activation="i8"), r"activation must be a QScheme, got str"),
    (lambda: OpQConfig(weight=None), r"weight must be a QScheme, got NoneType"),
])
def test_qconfig_construction_checks_types_and_names_the_field(make, message) -> None:
    with pytest.raises(QuantizationError, match=message):
        make()


def test_qconfig_accepts_numpy_scalars_and_quantizes_like_the_plain_values(cnn) -> None:
    import numpy as np

    g, data = cnn
    plain = QConfig(OpQConfig(weight=QScheme(qmin=-127, qmax=127, symmetric=True,
                                             per_channel=True)))
    numpy_ = QConfig(OpQConfig(weight=QScheme(qmin=np.int64(-127), qmax=np.int32(127),
                                              symmetric=np.bool_(True), per_channel=True)))
    assert numpy_ == plain and type(numpy_.default.weight.qmin) is int
    a = slimfx.quantize(g, data, qconfig=plain)
    b = slimfx.quantize(g, data, qconfig=numpy_)
    assert torch.equal(slimfx.to_torch(a)(data[0]), slimfx.to_torch(b)(data[0]))
