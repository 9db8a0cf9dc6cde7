"""``slimfx.load`` / ``Compiled.save`` on hostile or broken artifacts, CPU features, tuning DBs.

A ``.slim`` holds native code, so: a digest the user got elsewhere is checked before
anything is extracted; archives with any member other than the two regular files are
refused (nothing is ever written outside a temporary directory); the metadata is checked
against the library; code for CPU features this host lacks is refused with DeviceError
instead of dying with SIGILL. Every failure is a SlimfxError naming the problem.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm", reason="the TVM backend needs apache-tvm")

import slimfx  # noqa: E402
from slimfx.backends.tvm import artifact, sha256_file, targets  # noqa: E402
from slimfx.backends.tvm.compiled import Compiled  # noqa: E402
from slimfx.errors import ArtifactError, DeviceError  # noqa: E402
from slimfx.ir import Graph, TensorType  # noqa: E402

pytestmark = pytest.mark.tvm

X = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)


def _small_graph() -> Graph:
    g = Graph("small")
    x = g.add_input("x", TensorType((2, 8)))
    w = g.add_constant(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), "fc.w")
    g.set_outputs([g.add("tanh", [g.add("linear", [x, w], {}, name="fc")], name="out")])
    g.verify()
    return g


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    return slimfx.compile(_small_graph(), "x86")


@pytest.fixture(scope="module")
def saved(compiled, tmp_path_factory) -> Path:
    return compiled.save(tmp_path_factory.mktemp("art") / "model.slim")


@pytest.fixture(scope="module")
def saved_dir(compiled, tmp_path_factory) -> Path:
    return compiled.save(tmp_path_factory.mktemp("artdir") / "model")


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore


def _copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- sha256
def test_save_exposes_the_file_digest(compiled, saved) -> None:
    digest = hashlib.sha256(saved.read_bytes()).hexdigest()
    assert sha256_file(saved) == digest
    assert compiled.saved_sha256 == digest


def test_load_with_matching_digest(compiled, saved) -> None:
    loaded = slimfx.load(saved, sha256=sha256_file(saved).upper())
    np.testing.assert_array_equal(loaded(X), compiled(X))


def test_digest_mismatch_refused_before_extraction(saved, tmp_path, monkeypatch) -> None:
    bad = tmp_path / "tampered.slim"
    data = bytearray(saved.read_bytes())
    data[-5000] ^= 0x01
    bad.write_bytes(bytes(data))
    good = sha256_file(saved)

    def boom(*a, **k):
        raise AssertionError("extracted or loaded before the digest was checked")

    monkeypatch.setattr(artifact, "_extract", boom)
    monkeypatch.setattr(tvm.runtime, "load_module", boom)
    with pytest.raises(ArtifactError) as info:
        slimfx.load(bad, sha256=good)
    msg = str(info.value)
    assert good in msg and sha256_file(bad) in msg and "mismatch" in msg


@pytest.mark.parametrize("digest", ["abc", "g" * 64, ""])
def test_malformed_digest(saved, digest) -> None:
    with pytest.raises(ArtifactError, match="64 hex digits"):
        slimfx.load(saved, sha256=digest)


def test_digest_of_directory_artifact_refused(saved_dir) -> None:
    with pytest.raises(ArtifactError, match="directory"):
        slimfx.load(saved_dir, sha256="0" * 64)
    with pytest.raises(ArtifactError, match="not a file"):
        sha256_file(saved_dir)


def test_docs_say_a_slim_holds_native_code() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "native code" in readme and "sha256=" in readme
    doc = slimfx.load.__doc__ or ""
    assert "native code" in doc and "shared library" in doc and "sha256" in doc


# --------------------------------------------------------------------------- hostile tars
def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    """A member without data: a link to ``target``, a directory or a FIFO."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


HOSTILE = {
    "dotdot": lambda: [_file("../escaped.txt", b"x")],
    "absolute": lambda: [_file("/tmp/slimfx-escaped-abs.txt", b"x")],
    "nested": lambda: [_file("sub/dir/model.so", b"x")],
    "symlink": lambda: [_link("evil", "/etc/passwd", tarfile.SYMTYPE)],
    "hardlink": lambda: [_link("evil", "/etc/passwd", tarfile.LNKTYPE)],
    "directory": lambda: [_link("d", "", tarfile.DIRTYPE)],
    "fifo": lambda: [_link("f", "", tarfile.FIFOTYPE)],
    "duplicate-meta": lambda: [_file("meta.json", b"{}")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_refused(saved, tmp_path, case) -> None:
    good = _members(saved)
    sub = tmp_path / "sub"
    sub.mkdir()
    path = _tar(sub / "evil.slim", [_file(n, d) for n, d in good.items()] + HOSTILE[case]())
    with pytest.raises(ArtifactError, match="unexpected member|duplicate members"):
        slimfx.load(path)
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/slimfx-escaped-abs.txt").exists()


def test_meta_as_symlink_refused(saved, tmp_path) -> None:
    good = _members(saved)
    path = _tar(tmp_path / "link.slim", [_file("model.so", good["model.so"]),
                                         _link("meta.json", "/etc/hostname", tarfile.SYMTYPE)])
    with pytest.raises(ArtifactError, match="unexpected member"):
        slimfx.load(path)


@pytest.mark.parametrize("cut", ["empty", "header", "mid-library", "garbage"])
def test_truncated_or_corrupt_archive(saved, tmp_path, cut) -> None:
    data = saved.read_bytes()
    body = {"empty": b"", "header": data[:512], "mid-library": data[:len(data) // 2],
            "garbage": bytes(range(256)) * 40}[cut]
    path = tmp_path / "cut.slim"
    path.write_bytes(body)
    with pytest.raises(ArtifactError, match=str(path)):
        slimfx.load(path)


# --------------------------------------------------------------------------- metadata JSON
@pytest.mark.parametrize("depth", [65, 200_000])
def test_deeply_nested_meta_json(saved_dir, tmp_path, depth) -> None:
    bad = _copy_dir(saved_dir, tmp_path / "deep")
    (bad / "meta.json").write_text("[" * depth + "]" * depth)
    with pytest.raises(ArtifactError, match=f"nests {depth} levels"):
        slimfx.load(bad)


def test_deeply_nested_meta_json_in_archive(saved, tmp_path) -> None:
    good = _members(saved)
    deep = b'{"a": ' * 200_000 + b"1" + b"}" * 200_000
    path = _tar(tmp_path / "deep.slim", [_file("model.so", good["model.so"]),
                                         _file("meta.json", deep)])
    with pytest.raises(ArtifactError, match="nests 200000 levels"):
        slimfx.load(path)


def test_brackets_inside_strings_do_not_count() -> None:
    assert artifact._json_depth('{"a": "[[[[{{{{\\"[[", "b": [1]}') == 2


# --------------------------------------------------------------------------- meta vs library
def _edit(saved_dir: Path, tmp_path: Path, edit) -> Path:
    bad = _copy_dir(saved_dir, tmp_path / "edited")
    meta = json.loads((bad / "meta.json").read_text())
    edit(meta)
    (bad / "meta.json").write_text(json.dumps(meta))
    return bad


@pytest.mark.parametrize("case,edit,match", [
    ("entry", lambda m: m.update(entry="forward"), "no Relax function 'forward'"),
    ("input-count", lambda m: m["inputs"].append(dict(m["inputs"][0], name="y")),
     r"takes 1 input\(s\) \(x\), the metadata declares 2"),
    ("input-name", lambda m: m["inputs"][0].update(name="images"), "declares 1 \\(images\\)"),
    ("input-shape", lambda m: m["inputs"][0].update(shape=[3, 8]), "refuses inputs"),
    ("input-dtype", lambda m: m["inputs"][0].update(dtype="f16"), "refuses inputs"),
    ("output-count", lambda m: m["outputs"].append(m["outputs"][0]),
     r"returns 1 output\(s\) \(float32\[2, 4\]\), the metadata declares 2"),
    ("output-shape", lambda m: m["outputs"][0].update(shape=[4, 2]), "float32\\[4, 2\\]"),
    ("output-dtype", lambda m: m["outputs"][0].update(dtype="i32"), "int32\\[2, 4\\]"),
    ("features", lambda m: m.update(target_features="avx2"), "bad target_features"),
])
def test_metadata_checked_against_library(saved_dir, tmp_path, case, edit, match) -> None:
    with pytest.raises(ArtifactError, match=match):
        slimfx.load(_edit(saved_dir, tmp_path, edit))


def test_artifact_without_recorded_features_still_loads(saved_dir, tmp_path, compiled) -> None:
    old = _edit(saved_dir, tmp_path, lambda m: m.pop("target_features"))
    np.testing.assert_array_equal(slimfx.load(old)(X), compiled(X))


def test_metadata_records_target_features(saved_dir) -> None:
    meta = json.loads((saved_dir / "meta.json").read_text())
    assert meta["target_features"] == targets.target_cpu_features(meta["target"])
    assert "sse2" in meta["target_features"]


# --------------------------------------------------------------------------- CPU features
def _fake_host_without(monkeypatch, *flags: str) -> None:
    have = targets._cpu_flags()
    if not have or not targets.machine_is_x86():
        pytest.skip("needs an x86 Linux host (/proc/cpuinfo)")
    monkeypatch.setattr(targets, "_cpu_flags", lambda: have - set(flags))


def test_load_refuses_features_the_host_lacks(saved_dir, monkeypatch) -> None:
    meta = json.loads((saved_dir / "meta.json").read_text())
    if "avx2" not in meta["target_features"]:
        pytest.skip("this host has no AVX2, so the artifact does not use it")
    _fake_host_without(monkeypatch, "avx2", "avx512f")
    with pytest.raises(DeviceError) as info:
        slimfx.load(saved_dir)
    msg = str(info.value)
    assert "avx2" in msg and str(saved_dir) in msg and '"x86"' in msg


def test_fresh_model_checks_features_at_first_call(monkeypatch) -> None:
    c = slimfx.compile(_small_graph(), "x86")
    if "avx2" not in targets.target_cpu_features(c.target):
        pytest.skip("this host has no AVX2")
    _fake_host_without(monkeypatch, "avx2", "avx512f")
    with pytest.raises(DeviceError, match="lacks: .*avx2"):
        c(X)


def test_x86_target_drops_features_hidden_by_the_host(monkeypatch) -> None:
    _fake_host_without(monkeypatch, "avx512f")
    spec = targets.resolve_target("x86")
    feats = targets.target_cpu_features(spec)
    if "avx512f" in targets.target_cpu_features({k: v for k, v in spec.items() if k != "mattr"}):
        assert "-avx512f" in spec["mattr"]
    assert "avx512f" not in feats and targets.missing_cpu_features(spec) == []


_SPR_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    import slimfx
    from slimfx.errors import DeviceError
    from slimfx.ir import Graph, TensorType

    g = Graph("half")
    x = g.add_input("x", TensorType((16, 64)))
    w = g.add_constant(torch.randn(64, 64).half(), "w")
    y = g.add("linear", [g.add("cast", [x], {"dtype": "f16"}), w], {})
    g.set_outputs([g.add("cast", [g.add("relu", [y])], {"dtype": "f32"})])
    spr = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sapphirerapids",
           "num-cores": 2}
    c = slimfx.compile(g, spr)
    for what, run in (("call", lambda: c(np.ones((16, 64), np.float32))),
                      ("load", lambda: slimfx.load(c.save(sys.argv[1])))):
        try:
            run()
            print(what, "RAN")
        except DeviceError as e:
            print(what, "DeviceError:", e)
""")


def test_sapphirerapids_fp16_model_refused_without_sigill(tmp_path) -> None:
    spr = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sapphirerapids"}
    if not targets.machine_is_x86() or not targets.missing_cpu_features(spr):
        pytest.skip("this host runs sapphirerapids code")
    proc = subprocess.run([sys.executable, "-c", _SPR_SCRIPT, str(tmp_path / "spr.slim")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    for what in ("call", "load"):
        msg = lines[what]
        assert msg.startswith("DeviceError:"), msg
        assert "sapphirerapids" in msg and '"x86"' in msg
        for feat in targets.missing_cpu_features(spr):
            assert feat in msg
    meta = json.loads(_members(tmp_path / "spr.slim")["meta.json"])
    assert "avx512fp16" in meta["target_features"]


# --------------------------------------------------------------------------- save paths
def test_save_under_a_file_parent(compiled, tmp_path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    for target in (blocker / "model.slim", blocker / "deeper" / "model"):
        with pytest.raises(ArtifactError, match=f"cannot save to {target}.*is a file"):
            compiled.save(target)


def test_save_over_an_existing_other_kind(compiled, tmp_path) -> None:
    (tmp_path / "taken.slim").mkdir()
    with pytest.raises(ArtifactError, match="taken.slim.*directory is already there"):
        compiled.save(tmp_path / "taken.slim")


# --------------------------------------------------------------------------- tuning database
@pytest.mark.parametrize("records,workloads", [("{garbage", ""), ("[1, 2]", '["x"]')])
def test_corrupt_tuning_database_is_named(tmp_path, records, workloads) -> None:
    db = tmp_path / "tuning-db"
    db.mkdir()
    (db / "database_tuning_record.json").write_text(records)
    (db / "database_workload.json").write_text(workloads)
    with pytest.raises(ArtifactError) as info:
        slimfx.compile(_small_graph(), "x86", tuning_db=db)
    msg = str(info.value)
    assert f"tuning database {db}" in msg and "delete" in msg and "tuning_db=" in msg
