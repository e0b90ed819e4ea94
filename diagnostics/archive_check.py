"""Refuse client .pt2 archives that could run code when torch.export.load()/ep.module() reads them.

torch.export.load trusts its input: it unpickles some entries (weights_only=False), sympify()s
(evals) shape expressions, exec()s guard code, pastes names into generated Python source and
resolves node targets to any torch/operator/math callable. check_pt2_archive() inspects the zip
without loading anything and refuses every entry or string that could reach one of those paths;
check_graph_targets() re-checks the loaded graph before anything runs it. The strings inside the
models' JSON (expressions, guards, names, node targets) are checked by archive_grammar.

Every read is bounded before it happens: each entry's declared size is checked against a per-entry
cap (and the whole archive against a total cap) in the zip directory, both zip parsers must declare
the same sizes, and the few entries the checker parses are read once, by torch's own reader, into
a buffer of exactly the declared size, so a deflate stream that lies about its size cannot inflate
past it.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import zipfile
from typing import Any

import torch

from .archive_grammar import DENIED_OPS, FQN, REDO, SAFE_FUNCS, check_str, refuse, walk
from .errors import InputError, UnsafeArchiveError

_ENTRY = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/\w+\.json|data/sample_inputs/\w+\.pt|extra/[\w.-]+"
    r"|data/weights/(\w+_weights_config\.json|weight_[0-9]+)"
    r"|data/constants/(\w+_constants_config\.json|tensor_[0-9]+))\Z",
    re.ASCII,
)
MiB = 2**20
MAX_UNCOMPRESSED_BYTES = 2 * 2**30  # 4x the default upload limit; real archives declare about 1x their size
STORED_FACTOR = 4  # an archive may declare at most 4x its own size (+1 MiB): torch.export.save stores entries
MAX_MODELS = 16  # torch.export.save writes one models/<name>.json per exported program
MAX_JSON_ITEMS = 2_000_000  # values + containers per JSON entry; a 48-block transformer needs 150k
_ENTRY_CAPS = (  # declared-size cap per entry; measured need: a 48-block transformer's package()
    (re.compile(r"models/\w+\.json\Z"), 32 * MiB),  # 2.9 MB (about 61 kB per block)
    (re.compile(r"data/\w+/\w+_config\.json\Z"), 16 * MiB),  # 178 kB for 589 tensors
    (re.compile(r"data/sample_inputs/"), 64 * MiB),  # the example batch, as torch.save wrote it
    (re.compile(r"extra/"), 1 * MiB),  # gradhealth.json: 85 bytes
    (re.compile(r"data/(weights|constants)/"), None),  # tensors: bounded by the archive's total only
    (re.compile(""), 1024),  # archive_format, archive_version, byteorder, .data/*: a few bytes
)
_ENTRY_PROBLEMS = (  # the first matching pattern explains why an entry outside _ENTRY is refused
    ("data/aotinductor/", "AOTInductor native code: a shared library that would be loaded and run"),
    ("data/(executorch|mtia)|xl_model_weights/", "ExecuTorch/MTIA programs or external weights"),
    (r"data/(weights|constants)/\w+\.pt\Z", "legacy pickled weights/constants: torch.load(...)"),
    ("data/constants/(custom|opaque)_obj_", "pickled custom/opaque objects: unpickling runs code"),
    ("", "unknown entry: only the entries torch.export.save writes are accepted"),
)
_DEFLATED = zipfile.ZIP_DEFLATED
_SAFE_CALLABLES = (*SAFE_FUNCS.values(), torch.ops.higher_order.wrap_with_set_grad_enabled)


def _unreadable(path: Any, problem: str) -> InputError:
    """Build the message for uploads that are not .pt2 archives at all."""
    return InputError(
        f"{os.fspath(path)} is not a readable .pt2 archive: {problem}. Save the model with "
        "torch.export.save() or gradhealth.package() and upload that file."
    )


def check_pt2_archive(path: str | os.PathLike[str], *, max_uncompressed_bytes: int = MAX_UNCOMPRESSED_BYTES) -> None:
    """Refuse (UnsafeArchiveError) before anything is loaded if any entry could run code;
    raise InputError if it is not a readable .pt2 archive at all."""
    try:
        zf = zipfile.ZipFile(path)
        limit = min(max_uncompressed_bytes, STORED_FACTOR * os.path.getsize(path) + MiB)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise _unreadable(path, f"not a zip file ({e})") from None
    with zf:
        root, sizes = _check_layout(zf, limit)
    names = set(sizes)
    reader = _torch_reader(path, sizes)

    def read(rel: str) -> bytes:
        """The entry's bytes as torch will load them: one read, never more than its checked size."""
        if rel not in names:
            raise _unreadable(path, f"missing entry {rel}")
        try:
            data: bytes = reader.get_record(rel)  # miniz inflates into a buffer of the declared size
        except RuntimeError as e:
            raise _unreadable(path, f"entry {rel} is truncated or corrupt ({str(e)[:120]})") from None
        if len(data) != sizes[rel]:
            raise _unreadable(path, f"entry {rel} holds {len(data)} bytes, not the {sizes[rel]} it declares")
        return data

    if read("archive_format") != b"pt2" or read("archive_version") != b"0":
        raise _unreadable(path, "archive_format/archive_version is not pt2/0")
    models = sorted(n[7:-5] for n in names if n.startswith("models/"))
    if not models:
        raise _unreadable(path, "it holds no models/<name>.json")
    if len(models) > MAX_MODELS:
        raise refuse("the zip", f"it holds {len(models)} models; torch.export.save writes one")
    for model in models:
        for kind in ("weights", "constants"):
            entry = f"data/{kind}/{model}_{kind}_config.json"
            config = _json(read(entry), entry, path)
            _check_payload_config(config, entry, kind, names, limit)
        entry = f"models/{model}.json"
        walk(_json(read(entry), entry, path), "", entry)
        _check_sample_inputs(read(f"data/sample_inputs/{model}.pt"), model)


def entry_cap(rel: str) -> int | None:
    """The most bytes an entry (path below the archive root) may declare; None: only the total applies."""
    return next(cap for pattern, cap in _ENTRY_CAPS if pattern.match(rel))


def _check_layout(zf: zipfile.ZipFile, limit: int) -> tuple[str, dict[str, int]]:
    """Accept only the layout torch.export.save writes: one root folder, plain names, sane sizes."""
    infos = zf.infolist()
    names = [i.filename for i in infos]
    if not infos:
        raise _unreadable(zf.filename, "the zip is empty")
    if len(set(names)) != len(names):
        raise refuse("the zip", "an entry name appears twice (zip readers may disagree)")
    for info in infos:
        name = info.filename
        parts = set(name.split("/"))
        if not (name.isascii() and name.isprintable()) or "\\" in name or parts & {"", ".", ".."}:
            raise refuse(repr(name), "path traversal or unusual entry name")
        if info.flag_bits & 1 or info.compress_type not in (zipfile.ZIP_STORED, _DEFLATED):
            raise _unreadable(zf.filename, f"{name} is encrypted or uses an unknown compression")
    roots = {n.split("/")[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        problem = "entries outside the single archive root folder"
        if "version" in names:
            problem = "legacy pre-2.8 export format; its pickles load with weights_only=False"
        raise refuse("the zip layout", problem)
    root = roots.pop()
    sizes = {i.filename[len(root) + 1 :]: i.file_size for i in infos}
    if "archive_format" not in sizes:
        raise _unreadable(zf.filename, "it has no archive_format entry")
    for rel in sorted(sizes):
        if not _ENTRY.fullmatch(rel):
            raise refuse(rel, next(why for pat, why in _ENTRY_PROBLEMS if re.match(pat, rel)))
        cap = entry_cap(rel)
        if cap is not None and sizes[rel] > cap:
            raise refuse(rel, f"it declares {sizes[rel]} uncompressed bytes, over the {cap} allowed (zip bomb)")
    if sum(i.file_size for i in infos) > limit:
        raise refuse("the zip", f"it declares over {limit} uncompressed bytes (zip bomb)")
    return root, sizes


def _torch_reader(path: Any, sizes: dict[str, int]) -> Any:
    """Open the zip with torch's own reader too, so both parsers must agree on what it holds."""
    try:
        reader = torch._C.PyTorchFileReader(os.fspath(path))
    except RuntimeError as e:
        raise _unreadable(path, f"torch cannot read the zip ({str(e)[:120]})") from None
    if set(reader.get_all_records()) != set(sizes):
        raise refuse("the zip", "torch's zip reader sees different entries than Python's")
    for rel, size in sizes.items():  # torch allocates what it reads: the checked caps must bind it too
        if reader.get_record_size(rel) != size:
            raise refuse(rel, "torch's zip reader sees a different size than Python's")
    return reader


def _json(data: bytes, entry: str, path: Any) -> Any:
    """Parse an entry exactly like torch does (UTF-8, then json), if it holds few enough items."""
    items = data.count(b",") + data.count(b"[") + data.count(b"{")  # an upper bound on values + containers
    if items > MAX_JSON_ITEMS:
        raise refuse(entry, f"it holds about {items} JSON items, over the {MAX_JSON_ITEMS} allowed")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _unreadable(path, f"{entry} is not valid JSON ({e})") from None


def _check_payload_config(doc: Any, entry: str, kind: str, names: set[str], limit: int) -> None:
    """Allow only raw tensors: use_pickle payloads and custom/opaque objects get unpickled."""
    config = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(config, dict):
        raise refuse(entry, "it is not a payload config")
    prefix = "weight_" if kind == "weights" else "tensor_"
    for fqn, meta in config.items():
        check_str(fqn, FQN, entry, "name")
        meta = meta if isinstance(meta, dict) else {}
        if meta.get("use_pickle") is not False:
            raise refuse(entry, f"{fqn!r} is pickled (use_pickle); unpickling it runs code")
        path_name = meta.get("path_name")
        if not re.fullmatch(prefix + "[0-9]+", str(path_name)):
            raise refuse(entry, f"{fqn!r} is stored as {path_name!r}, not as a raw tensor")
        if f"data/{kind}/{path_name}" not in names:
            raise refuse(entry, f"{fqn!r} points at missing entry {path_name}")
        sizes = (meta.get("tensor_meta") or {}).get("sizes")
        entries = [s.get("as_int") if isinstance(s, dict) else None for s in sizes or []]
        dims = [d for d in entries if type(d) is int and d >= 0]
        if not isinstance(sizes, list) or len(dims) != len(entries):
            raise refuse(entry, f"{fqn!r} has an invalid tensor size {sizes!r}")
        if math.prod(dims) > limit:  # an empty record becomes torch.zeros(sizes)
            raise refuse(entry, f"{fqn!r} has an absurd tensor size {dims}")


def _check_sample_inputs(data: bytes, model: str) -> None:
    """Prove the sample inputs load with weights_only=True, else torch falls back to unpickling."""
    entry = f"data/sample_inputs/{model}.pt"
    if not data:
        return
    _check_nested_zip(data, entry)
    try:
        value = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:  # any failure makes torch retry with weights_only=False
        raise refuse(
            entry,
            f"it is not a plain tensor file ({type(e).__name__}); torch would retry with "
            "weights_only=False, which runs the pickle's code",
        ) from None
    if not isinstance(value, (tuple, dict)) or not _plain(value):
        raise refuse(entry, "it holds objects other than tensors, containers and numbers")


def _check_nested_zip(data: bytes, entry: str) -> None:
    """torch.save writes an uncompressed zip: anything else could inflate past the entry's size."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as nested:
            infos = nested.infolist()
    except (OSError, EOFError, ValueError, zipfile.BadZipFile):
        raise refuse(entry, "it is not a torch.save zip file") from None
    if any(i.compress_type != zipfile.ZIP_STORED for i in infos) or sum(i.file_size for i in infos) > len(data):
        raise refuse(entry, "its entries are compressed or declare more bytes than the file holds (zip bomb)")


def _plain(value: Any) -> bool:
    """Tell whether a loaded value holds only tensors, containers, numbers and strings."""
    if type(value) in (torch.Tensor, torch.nn.Parameter, int, float, bool, str, type(None)):
        return True
    if type(value) in (tuple, list):
        return all(_plain(v) for v in value)
    is_dict = type(value) is dict
    return is_dict and all(type(k) in (str, int) and _plain(v) for k, v in value.items())


def _allowed_callable(target: Any) -> bool:
    """Tell whether a loaded node target is an ATen/prims op or shape arithmetic."""
    if any(target is f for f in _SAFE_CALLABLES):
        return True
    if isinstance(target, torch._ops.OpOverload):
        namespace, name = target.namespace, target._opname
    elif isinstance(target, torch._ops.OpOverloadPacket):
        namespace, _, name = target._qualified_op_name.partition("::")
    else:
        return False
    return namespace in ("aten", "prims") and name not in DENIED_OPS


def check_graph_targets(ep: torch.export.ExportedProgram) -> None:
    """Defense in depth after loading: refuse any call that is not a tensor op or shape math."""
    for module in ep.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op in ("call_module", "call_method") or (
                node.op == "call_function" and not _allowed_callable(node.target)
            ):
                raise UnsafeArchiveError(
                    f"refused the loaded graph: node {node.name!r} calls {node.target!r}, which "
                    f"is not an ATen/prims tensor op or shape arithmetic. {REDO}."
                )
