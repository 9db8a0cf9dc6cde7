"""TVM's native log lines go to Python logging at DEBUG; compile, save and load print nothing."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

import slimfx
from slimfx.backends.tvm.native_log import LOGGER_NAME, native_log_to_logging

TVM_WARNING = b"[16:07:17] /project/src/runtime/vm/executable.cc:276: Warning: Scope Saving:\n"


def test_native_lines_are_logged_and_other_output_is_kept(
        capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    with native_log_to_logging():
        os.write(2, TVM_WARNING)                # what TVM's C++ LOG(WARNING) does
        os.write(2, b"    continued on the next line\n")
        os.write(1, b"a line of some other library\n")
        print("python output", flush=True)
        with native_log_to_logging():            # nested: the outer capture holds
            os.write(2, TVM_WARNING.replace(b"Saving", b"Loaded"))
        mid = capfd.readouterr()
    out, err = capfd.readouterr()
    assert mid.err == "" and "Scope" not in mid.out   # nothing native escaped meanwhile
    assert mid.out + out == "python output\na line of some other library\n"
    assert err == ""
    logged = [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME]
    assert logged == [TVM_WARNING.decode().rstrip(), "    continued on the next line",
                      TVM_WARNING.decode().rstrip().replace("Saving", "Loaded")]
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == LOGGER_NAME)


def test_descriptors_are_restored_after_an_error(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="inside"), native_log_to_logging():
        os.write(2, b"not a TVM line\n")
        raise ValueError("inside")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "not a TVM line\nafter\n"


def test_other_threads_wait_for_the_capture(capfd: pytest.CaptureFixture[str]) -> None:
    inside, release = threading.Event(), threading.Event()
    order = []

    def first() -> None:
        with native_log_to_logging():
            inside.set()
            release.wait(5)
            order.append("first")

    def second() -> None:
        inside.wait(5)
        with native_log_to_logging():
            order.append("second")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    inside.wait(5)
    release.set()
    for t in threads:
        t.join(10)
    assert order == ["first", "second"]


@pytest.mark.tvm
@pytest.mark.slow
def test_compile_save_load_print_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                         caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.randn(1, 3, 8, 8)
    g8 = slimfx.quantize(slimfx.trace(model, (x,)), [x], "ptq-int8")
    capfd.readouterr()
    c = slimfx.compile(g8, "x86", progress=False)
    c(x)  # a model that ran is what makes TVM 0.27 print "Scope Saving" lines when saved
    c.save(tmp_path / "m.slim")
    c2 = slimfx.load(tmp_path / "m.slim")
    y = c2(x)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert torch.equal(torch.as_tensor(y), slimfx.to_torch(g8)(x))
    # TVM 0.27 does print its "Scope Saving/Loaded" lines: they reached logging instead
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == LOGGER_NAME)
    assert "Scope Saving" in logged and "Scope Loaded" in logged
