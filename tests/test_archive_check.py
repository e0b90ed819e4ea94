"""Malicious .pt2 archives are refused before torch.export.load() can run their payloads."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from gradhealth.diagnostics.archive_check import check_graph_targets, check_pt2_archive
from gradhealth.diagnostics.errors import InputError, UnsafeArchiveError
from torch.export import Dim

from .bombs import MiB, zero_bomb

warnings.filterwarnings("ignore", category=UserWarning)


class PerSampleLoss(nn.Module):
    """The wrapper our product exports: forward(x, targets) -> per-sample cross-entropy."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.net(x), targets, reduction="none")


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = (
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.Linear(4, 5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1))


class SmallRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.gru = nn.LSTM(6, 8, batch_first=True), nn.GRU(8, 8, batch_first=True)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gru(self.lstm(x)[0])[0][:, -1])


class SmallTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
        self.fc = nn.Linear(16, 5)
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = F.scaled_dot_product_attention(x, x, x, is_causal=True)
        with torch.no_grad():  # exported as a grad-mode higher-order op with a nested graph
            offset = attn.mean() * self.scale
        return self.fc((self.layer(attn) + offset).mean(1))


class ShapeArithmetic(nn.Module):
    """What dynamic exports serialize: shape math, unbacked ints, asserts, derived-dim guards."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        k = targets.max().item()
        torch._check(k >= 0)
        torch._check(k < 5)
        logits = self.fc(x[1:]) * (n // 2 + n % 3 + max(n, 2)) / torch.sym_float(n)
        return F.cross_entropy(logits, targets, reduction="none") + k


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (
        lambda: nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 5)),
        (4, 10),
    ),
    "cnn_batchnorm": (SmallCNN, (4, 3, 8, 8)),
    "lstm_gru": (SmallRNN, (4, 7, 6)),
    "transformer_sdpa": (SmallTransformer, (4, 6, 16)),
}


def export_archive(name: str, path: Path) -> Path:
    """Export a model the way clients do (dynamic batch dim) and save it as .pt2."""
    make, shape = MODELS[name]
    torch.manual_seed(0)
    batch = Dim("batch", min=1, max=1024)
    ep = torch.export.export(
        PerSampleLoss(make()),
        (torch.randn(*shape), torch.randint(0, 5, (shape[0],))),
        dynamic_shapes={"x": {0: batch}, "targets": {0: batch}},
    )
    torch.export.save(ep, path)
    return path


def safe_load(path: Path) -> nn.Module:
    """The only way the service loads client archives."""
    check_pt2_archive(path)
    ep = torch.export.load(path)
    check_graph_targets(ep)
    return ep.module()


class Payload:
    """A pickle that creates `marker` when unpickled (stands in for os.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def code(marker: Path) -> str:
    """A Python expression that creates `marker` when eval'd or exec'd."""
    return f"__import__('pathlib').Path('{marker}').touch()"


def rewrite(
    src: Path,
    dst: Path,
    *,
    edit: dict[str, Callable[[bytes], bytes]] | None = None,
    add: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
    raw: dict[str, bytes] | None = None,
    keep: bool = True,
) -> Path:
    """Copy every entry of a real archive, changing, adding or dropping a few."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        root = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            rel = info.filename[len(root) + 1 :]
            if keep and rel not in drop:
                data = zin.read(info.filename)
                zout.writestr(info.filename, (edit or {}).get(rel, lambda d: d)(data))
        for rel, data in (add or {}).items():
            zout.writestr(f"{root}/{rel}", data)
        for name, data in (raw or {}).items():
            zout.writestr(name, data)
    return dst


def json_edit(fn: Callable[[Any], Any]) -> Callable[[bytes], bytes]:
    """Turn an edit of a JSON document into a byte rewrite."""

    def apply(data: bytes) -> bytes:
        doc = json.loads(data)
        new = fn(doc)
        return json.dumps(doc if new is None else new).encode()

    return apply


def rename(doc: Any, old: str, new: str) -> Any:
    """Rename a value everywhere in a JSON document (keys and strings)."""
    if isinstance(doc, dict):
        return {(new if k == old else k): rename(v, old, new) for k, v in doc.items()}
    if isinstance(doc, list):
        return [rename(v, old, new) for v in doc]
    return new if doc == old else doc


MODEL = "models/model.json"
WEIGHTS = "data/weights/model_weights_config.json"
CONSTANTS = "data/constants/model_constants_config.json"
SAMPLE = "data/sample_inputs/model.pt"


def graph(doc: Any) -> Any:
    """The top-level graph of an exported-program JSON document."""
    return doc["graph_module"]["graph"]


def set_config(fqn: str, **fields: Any) -> Callable[[bytes], bytes]:
    """Add or change one entry of a weights/constants payload config."""

    def fn(doc: Any) -> None:
        doc["config"].setdefault(fqn, {"is_param": False, "tensor_meta": None}).update(fields)

    return json_edit(fn)


def from_file_node(marker: Path) -> Callable[[Any], None]:
    """Make the dropout node call aten.from_file(marker, shared=True): it creates the file."""

    def fn(doc: Any) -> None:
        node = next(n for n in graph(doc)["nodes"] if n["name"] == "dropout")
        node["target"] = "torch.ops.aten.from_file.default"
        node["inputs"] = [
            {"name": "filename", "arg": {"as_string": str(marker)}, "kind": 1},
            {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
            {"name": "size", "arg": {"as_int": 4}, "kind": 1},
        ]

    return fn


def kwarg_key(key: str) -> Callable[[Any], None]:
    """Give the input spec a keyword argument named `key` (pasted into ep.module()'s code)."""

    def fn(doc: Any) -> None:
        protocol, spec = json.loads(signature(doc)["in_spec"])
        spec["children_spec"][1]["context"] = json.dumps([key])
        signature(doc)["in_spec"] = json.dumps([protocol, spec])

    return fn


def guard_payload(marker: Path) -> str:
    """guards_code that escapes the generated guard function and runs inside ep.module()."""
    return f"0 #\n)\n[{code(marker)}]\ndef g():\n  (0"


def legacy_entries(evil: bytes, base: Path | None) -> dict[str, bytes]:
    """A torch<=2.7 export zip: torch.export.load falls back to it and unpickles its .pt files."""
    if base is None:
        return {}
    with zipfile.ZipFile(base) as zin:
        program = zin.read(next(n for n in zin.namelist() if n.endswith(MODEL)))
    return {
        "version": b"8.20",
        "serialized_exported_program.json": program,
        **{f"serialized_{n}.pt": evil for n in ("state_dict", "constants", "example_inputs")},
    }


def model_edit(fn: Callable[[Any], Any]) -> dict[str, Any]:
    """Craft spec that edits models/model.json (fn edits in place or returns a new document)."""
    return {"edit": {MODEL: json_edit(fn)}}


def signature(doc: Any) -> Any:
    """The module call signature (forward_arg_names, in_spec) ep.module() generates code from."""
    return doc["graph_module"]["module_call_graph"][0]["signature"]


# Each vector: name -> (how to craft it from the base archive, how far plain torch gets to run it).
def vectors(m: Path, base: Path | None = None) -> dict[str, tuple[dict[str, Any], str]]:
    evil = pickle.dumps(Payload(m))
    fqn_payload = f'net.0")+[{code(m)}]+getattr(self,"w'
    return {
        "use_pickle_weight": (
            {
                "edit": {
                    WEIGHTS: set_config("net.0.weight", use_pickle=True),
                    "data/weights/weight_0": lambda _: evil,
                }
            },
            "load",
        ),
        "use_pickle_constant": (
            {
                "edit": {CONSTANTS: set_config("evil", use_pickle=True, path_name="tensor_0")},
                "add": {"data/constants/tensor_0": evil},
            },
            "load",
        ),
        "opaque_object_constant": (
            {
                "edit": {CONSTANTS: set_config("evil", use_pickle=True, path_name="opaque_obj_0")},
                "add": {"data/constants/opaque_obj_0": evil},
            },
            "load",
        ),
        "custom_object_constant": (
            {
                "edit": {CONSTANTS: set_config("evil", use_pickle=False, path_name="custom_obj_0")},
                "add": {"data/constants/custom_obj_0": evil},
            },
            "none",
        ),
        "pickled_sample_inputs": ({"edit": {SAMPLE: lambda _: evil}}, "load"),
        "expr_str_sympify": (
            model_edit(lambda d: graph(d)["tensor_values"]["x"]["sizes"][0]["as_expr"].update(expr_str=code(m))),
            "load",
        ),
        "sympy_symbol_call": (  # sympy prints Symbol('exit')() as exit() in ep.module()'s guards
            model_edit(
                lambda d: graph(d)["tensor_values"]["x"]["sizes"][0]["as_expr"].update(
                    expr_str="Add(Symbol('s24', positive=True, integer=True), Symbol('exit')())"
                )
            ),
            "none",
        ),
        "guards_code_exec": (
            model_edit(lambda d: d.update(guards_code=[guard_payload(m)])),
            "module",
        ),
        "placeholder_name_codegen": (
            model_edit(lambda d: rename(d, "targets", f"targets=[{code(m)}]")),
            "load",
        ),
        "aten_from_file_target": (model_edit(from_file_node(m)), "call"),
        "torch_load_target": (
            model_edit(lambda d: graph(d)["nodes"][1].update(target="torch.load")),
            "none",
        ),
        "higher_order_op_target": (
            model_edit(lambda d: graph(d)["nodes"][1].update(target="torch.ops.higher_order.cond")),
            "none",
        ),
        "source_fn_getattr_chain": (
            model_edit(
                lambda d: graph(d)["nodes"][1]["metadata"].update(source_fn_stack="relu,torch.__builtins__.eval")
            ),
            "none",
        ),
        "forward_arg_names_codegen": (
            model_edit(lambda d: signature(d).update(forward_arg_names=["x", f"t=[{code(m)}]"])),
            "none",
        ),
        "in_spec_key_codegen": (model_edit(kwarg_key(f"k':[{code(m)}],'j")), "none"),
        "fqn_getattr_codegen": (
            model_edit(lambda d: rename(d, "net.0.weight", fqn_payload)),
            "none",
        ),
        "string_graph_input_guard": (
            model_edit(lambda d: graph(d)["inputs"].append({"as_string": f"a'=={code(m)}=='"})),
            "none",
        ),
        "dunder_fqn": (
            {"edit": {WEIGHTS: lambda b: b.replace(b'"net.0.weight"', b'"__class__.x"')}},
            "none",
        ),
        "absurd_tensor_size": (
            {"edit": {WEIGHTS: lambda b: b.replace(b'{"as_int": 16}', b'{"as_int": 10000000000000}')}},
            "none",
        ),
        "legacy_weights_file": ({"add": {"data/weights/model.pt": evil}}, "load"),
        "legacy_constants_file": ({"add": {"data/constants/model.pt": evil}}, "load"),
        "legacy_pre_2_8_zip": ({"keep": False, "raw": legacy_entries(evil, base)}, "load"),
        "legacy_entries_beside_pt2": (
            {"raw": {"version": b"8.20", "serialized_constants.pt": evil}},
            "none",
        ),
        "aotinductor_entry": ({"add": {"data/aotinductor/model/model.so": b"\x7fELF"}}, "none"),
        "unknown_entry": ({"add": {"data/evil.bin": evil}}, "none"),
        "path_traversal_name": ({"raw": {"../../evil.py": b"print(1)"}}, "none"),
        "absolute_path_name": ({"raw": {"/tmp/evil.py": b"print(1)"}}, "none"),
        "second_root_folder": ({"raw": {"other/archive_format": b"pt2"}}, "none"),
        "duplicate_entry": ({"raw": {"archive/archive_format": b"pt2"}}, "none"),
    }


VECTORS = list(vectors(Path("m")))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_archive("mlp", tmp_path_factory.mktemp("base") / "archive.pt2")


def craft(base: Path, tmp_path: Path, vector: str) -> tuple[Path, Path, str]:
    marker = tmp_path / f"MARK_{vector}"
    spec, stage = vectors(marker, base)[vector]
    return rewrite(base, tmp_path / f"{vector}.pt2", **spec), marker, stage


@pytest.mark.parametrize("name", list(MODELS))
def test_legit_archives_pass_and_run(name: str, tmp_path: Path) -> None:
    path = export_archive(name, tmp_path / f"{name}.pt2")
    module = safe_load(path)
    shape = MODELS[name][1]
    out = module(torch.randn(7, *shape[1:]), torch.randint(0, 5, (7,)))  # a different batch size
    assert out.shape == (7,) and torch.isfinite(out).all()


def test_legit_dynamic_shape_features_pass_and_run(tmp_path: Path) -> None:
    batch = Dim("batch", min=2, max=512)
    ep = torch.export.export(
        ShapeArithmetic(),
        (torch.randn(5, 6), torch.randint(0, 5, (4,))),
        dynamic_shapes={"x": {0: batch + 1}, "targets": {0: batch}},
    )
    assert ep.range_constraints and any(n.target is torch.ops.aten._assert_scalar.default for n in ep.graph.nodes)
    torch.export.save(ep, tmp_path / "shapes.pt2")
    module = safe_load(tmp_path / "shapes.pt2")
    assert module(torch.randn(9, 6), torch.randint(0, 5, (8,))).shape == (8,)
    with pytest.raises(Exception, match="Guard failed|size"):  # the guards still run
        module(torch.randn(9, 6), torch.randint(0, 5, (3,)))


@pytest.mark.parametrize("vector", VECTORS)
def test_vector_is_refused_and_payload_never_runs(vector: str, base: Path, tmp_path: Path) -> None:
    path, marker, _ = craft(base, tmp_path, vector)
    with pytest.raises(UnsafeArchiveError) as info:
        check_pt2_archive(path)
    assert "gradhealth.package()" in str(info.value)
    with pytest.raises(UnsafeArchiveError):
        safe_load(path)
    assert not marker.exists()


def test_zip_bomb_limit_is_refused(base: Path) -> None:
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        check_pt2_archive(base, max_uncompressed_bytes=1000)


def test_graph_targets_are_rechecked_after_loading(base: Path, tmp_path: Path) -> None:
    path, marker, _ = craft(base, tmp_path, "aten_from_file_target")
    ep = torch.export.load(path)  # loading alone does not run graph nodes
    with pytest.raises(UnsafeArchiveError, match="from_file"):
        check_graph_targets(ep)
    ep = torch.export.load(base)
    node = next(n for n in ep.graph.nodes if n.op == "call_function")
    node.target = torch.save
    with pytest.raises(UnsafeArchiveError, match="save"):
        check_graph_targets(ep)
    assert not marker.exists()


CONTROL = """
import sys, torch, warnings
warnings.simplefilter("ignore")
for path, stage in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        ep = torch.export.load(path)
        if stage != "load":
            module = ep.module()
            module(torch.randn(3, 10), torch.randint(0, 5, (3,)))
    except BaseException:
        pass
"""


def test_payloads_really_run_without_the_checker(base: Path, tmp_path: Path) -> None:
    """Controls: plain torch.export.load/.module() runs each payload (in a throwaway process)."""
    crafted = {v: craft(base, tmp_path, v) for v, (_, stage) in vectors(tmp_path).items() if stage != "none"}
    args = [str(a) for path, _, stage in crafted.values() for a in (path, stage)]
    subprocess.run([sys.executable, "-c", CONTROL, *args], check=True, capture_output=True, timeout=120)
    ran = {v for v, (_, marker, _) in crafted.items() if marker.exists()}
    assert ran == set(crafted)


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "junk_prefix"])
def test_non_archives_raise_input_error(kind: str, base: Path, tmp_path: Path) -> None:
    data = base.read_bytes()
    path = tmp_path / "upload.pt2"
    path.write_bytes(
        {
            "empty": b"",
            "text": b"not a zip at all",
            "truncated": data[: len(data) // 2],
            "junk_prefix": b"JUNK" * 64 + data,
        }[kind]
    )
    with pytest.raises(InputError) as info:
        check_pt2_archive(path)
    assert not isinstance(info.value, UnsafeArchiveError)


@pytest.mark.parametrize("missing", [MODEL, "archive_version", "archive_format", SAMPLE])
def test_incomplete_archives_raise_input_error(missing: str, base: Path, tmp_path: Path) -> None:
    path = rewrite(base, tmp_path / "incomplete.pt2", drop=(missing,))
    with pytest.raises(InputError) as info:
        check_pt2_archive(path)
    assert not isinstance(info.value, UnsafeArchiveError)


def test_missing_file_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        check_pt2_archive(tmp_path / "nope.pt2")


# Peak RSS growth of a fresh process while it checks one archive: VmHWM after, minus VmRSS before.
PEAK = """
import json, sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
from gradhealth.diagnostics.archive_check import check_pt2_archive

def kib(field):
    return next(int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))

Path("/proc/self/clear_refs").write_text("5")
before = kib("VmRSS:")
try:
    check_pt2_archive(sys.argv[1])
    error = None
except Exception as e:
    error = f"{type(e).__name__}: {e}"
print(json.dumps({"growth_kib": kib("VmHWM:") - before, "error": error}))
"""
BOMB_RSS_BOUND = 300 * MiB  # over the checking process's RSS before the check; it was 4+ GiB before the fix


def peak_check(path: Path) -> tuple[int, str | None]:
    """Check the archive in a fresh process; its peak RSS growth in bytes and the error it raised."""
    done = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["growth_kib"] * 1024, result["error"]


def test_deflate_bomb_entry_is_refused_from_the_directory(base: Path, tmp_path: Path) -> None:
    """Finding 3: a ~2 MB .pt2 whose archive_format is 2 GiB of deflated zeros (was 6.6 GB RSS, 27 s)."""
    bomb = zero_bomb(base, tmp_path / "bomb.pt2", "archive_format", 2 * 2**30)
    assert bomb.stat().st_size < 3 * MiB
    growth, error = peak_check(bomb)
    assert error and error.startswith("UnsafeArchiveError") and "archive_format" in error and "zip bomb" in error
    assert growth < BOMB_RSS_BOUND, f"checking grew RSS by {growth / MiB:.0f} MiB"


def test_entry_lying_about_its_size_is_read_only_up_to_the_declared_size(base: Path, tmp_path: Path) -> None:
    """The directory says 3 bytes, the deflate stream holds 512 MiB: the read stops at 3 bytes."""
    bomb = zero_bomb(base, tmp_path / "liar.pt2", "archive_format", 512 * MiB, declare=3)
    growth, error = peak_check(bomb)
    assert error and error.startswith("InputError") and "archive_format" in error
    assert growth < BOMB_RSS_BOUND, f"checking grew RSS by {growth / MiB:.0f} MiB"


@pytest.mark.parametrize("rel", [MODEL, WEIGHTS, SAMPLE, "extra/notes.txt", "byteorder"])
def test_per_entry_caps_are_checked_before_reading(rel: str, base: Path, tmp_path: Path) -> None:
    size = {MODEL: 33, WEIGHTS: 17, SAMPLE: 65}.get(rel, 2) * MiB
    path = zero_bomb(base, tmp_path / "big.pt2", rel, size)
    with pytest.raises(UnsafeArchiveError, match=f"refused {rel}: it declares {size} uncompressed bytes"):
        check_pt2_archive(path)


def test_total_declared_size_is_tied_to_the_file_size(base: Path, tmp_path: Path) -> None:
    """Weights are only bounded by the total: at most 4x the archive's own size (+1 MiB)."""
    path = zero_bomb(base, tmp_path / "weights.pt2", "data/weights/weight_0", 64 * MiB)
    with pytest.raises(UnsafeArchiveError, match="the zip: it declares over .* uncompressed bytes"):
        check_pt2_archive(path)


def test_compressed_sample_inputs_zip_is_refused(base: Path, tmp_path: Path) -> None:
    """The sample inputs are a zip inside the zip: torch.save stores it uncompressed, so must the upload."""
    inner = tmp_path / "inner.pt"
    torch.save((torch.zeros(1024, 1024),), inner)
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(inner) as zin, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    assert deflated.stat().st_size < 100_000
    path = rewrite(base, tmp_path / "nested.pt2", edit={SAMPLE: lambda _: deflated.read_bytes()})
    with pytest.raises(UnsafeArchiveError, match="compressed or declare more bytes"):
        check_pt2_archive(path)


def test_json_entry_with_too_many_items_is_refused_before_parsing(base: Path, tmp_path: Path) -> None:
    """2.1 million empty lists in 6 MB would take about 140 MB as Python objects."""
    many = b'{"config": {}, "x": [' + b"[]," * 2_100_000 + b"[]]}"
    path = rewrite(base, tmp_path / "items.pt2", edit={CONSTANTS: lambda _: many})
    with pytest.raises(UnsafeArchiveError, match="JSON items"):
        check_pt2_archive(path)


class _BitwiseAnd(nn.Module):
    """A boolean mask combined with `&`, as Hugging Face's causal masks are: the graph calls aten.__and__."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where((x > 0) & (x < 1), x, x * 0.5)


def test_python_operator_ops_pass_and_other_dunders_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "and.pt2"
    torch.export.save(torch.export.export(_BitwiseAnd(), (torch.randn(4),)), path)
    with zipfile.ZipFile(path) as zf:
        model_json = next(n for n in zf.namelist() if n.endswith("models/model.json"))
        doc = json.loads(zf.read(model_json))
    targets = [n["target"] for n in doc["graph_module"]["graph"]["nodes"]]
    assert "torch.ops.aten.__and__.Tensor" in targets
    check_pt2_archive(path)  # allowed: the dunder is one of ATen's operator ops
    for evil in (
        "torch.ops.aten.__class__.x",
        "torch.ops.aten.__getattribute__.default",
        "torch.ops.aten.__and.Tensor",
    ):
        doc["graph_module"]["graph"]["nodes"][0]["target"] = evil
        bad = tmp_path / "evil.pt2"
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
            for info in src.infolist():
                data = json.dumps(doc).encode() if info.filename == model_json else src.read(info.filename)
                dst.writestr(info, data)
        with pytest.raises(UnsafeArchiveError, match="not an ATen/prims tensor op"):
            check_pt2_archive(bad)
