"""The strings of a .pt2 archive's JSON that torch.export.load() turns into code, names or calls.

Shape expressions are sympify()d (eval'd), guards exec()d, names pasted into generated Python and
node targets resolved to callables: walk() checks every such string of a models/<name>.json
against a small grammar (names, operators, plain literals), so none can reach Python. The zip
layout, sizes and payloads are checked by archive_check, which calls walk() on each model.
"""

from __future__ import annotations

import io
import json
import math
import operator
import re
import tokenize
from typing import Any

import torch

from .errors import UnsafeArchiveError

REDO = "Re-create the package with gradhealth.package() from a trusted environment"
WORD = re.compile(r"\w*\Z", re.ASCII)  # any other string: it may become a name in generated code
FQN = re.compile(r"(\w+(\.\w+)*)?\Z", re.ASCII)
_IDENT = re.compile(r"[A-Za-z_]\w*\Z", re.ASCII)
_VERSION = re.compile(r"[\w.+-]*\Z", re.ASCII)
_SYMBOL = re.compile(r"[a-z]{1,4}[0-9]+\Z")  # shape symbols: s24, u0, zf1
_NUMERAL = re.compile(r"-?[0-9]+(\.[0-9]*)?(e[+-]?[0-9]+)?\Z")
_OPAQUE_FN = re.compile(r"(OpaqueUnaryFn|BitwiseFn)_\w+\Z", re.ASCII)
# ATen's Python-operator ops (x & y, x | y, ...) are the only double-underscore op names allowed:
# Hugging Face's causal masks emit aten.__and__, and no other dunder may reach getattr.
_DUNDER_OPS = "and|or|xor|lshift|rshift|iand|ior|ixor|ilshift|irshift"
_OP_TARGET = re.compile(rf"torch\.ops\.(aten|prims)\.(_?[A-Za-z]\w*|__(?:{_DUNDER_OPS})__)\.([A-Za-z]\w*)\Z", re.ASCII)
# ATen ops that touch files, print or change process-wide state: never needed for gradients.
DENIED_OPS = frozenset(
    "save from_file _print warn manual_seed seed set_ record_stream set_grad_enabled"
    " _cufft_set_plan_cache_max_size _cufft_clear_plan_cache".split()
)
SAFE_FUNCS: dict[str, Any] = {  # shape arithmetic torch.export emits as node targets
    f"{prefix}.{name}": getattr(module, name)
    for prefix, module, names in (
        ("_operator", operator, "add sub mul truediv floordiv mod pow neg pos abs eq ne lt le gt"),
        ("_operator", operator, "ge and_ or_ xor lshift rshift getitem"),
        ("math", math, "trunc floor ceil"),
        ("torch", torch, "sym_int sym_float sym_not sym_ite sym_max sym_min sym_sum _sym_sqrt"),
    )
    for name in names.split()
}
_GRAD_MODE_HOP = "torch.ops.higher_order.wrap_with_set_grad_enabled"  # `with torch.no_grad():`
_EXPR = (  # names and operators of the sympy srepr() strings export writes as expr_str
    frozenset(
        "Symbol Integer Float Rational Add Mul Pow Mod Min Max Abs Eq Ne Lt Le Gt Ge Equality"
        " Unequality StrictLessThan LessThan StrictGreaterThan GreaterThan And Or Not Piecewise"
        " ExprCondPair floor ceiling sqrt true false oo int_oo nan zoo True False positive"
        " negative nonnegative nonpositive integer real finite precision FloorDiv"
        " ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift"
        " PowByNatural FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator"
        " TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat Identity".split()
    ),
    frozenset("( ) , = + - * / // % < > <= >= == != & | ~ ^".split()),
)
_GUARD = (  # names and operators of guards such as L['x'].size()[0] <= 1024
    frozenset(
        "L and or not if else True False None math torch min max abs float int inf nan"
        " IsNonOverlappingAndDenseIndicator cast_symbool_to_symint_guardless".split()
    ),
    frozenset("( ) [ ] , . + - * / // % ** < > <= >= == != & | ~ ^".split()),
)
_ATTRIBUTES = frozenset(
    "size stride storage_offset floor ceil trunc sqrt isnan isinf inf"
    " sym_int sym_float sym_not sym_ite sym_max sym_min sym_sqrt _sym_sqrt".split()
)
_LITERAL_STARTS = tuple("'\"0123456789")  # a "(" after a literal would call it
_TREESPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"})
_FQN_KEYS = frozenset({"parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn", "class_fqn"})
_FREE_TEXT_KEYS = frozenset({"as_string", "as_strings", "stack_trace"})  # repr()'d, never code


def refuse(entry: str, problem: str) -> UnsafeArchiveError:
    """Build the one refusal message format users see."""
    return UnsafeArchiveError(f"refused {entry}: {problem}; the archive was not loaded. {REDO}.")


def walk(value: Any, key: str, entry: str) -> None:
    """Check every string the deserializer turns into code, a name or an attribute path."""
    if key == "metadata":
        _check_metadata(value, entry)
    elif key in ("target", "as_operator"):
        _check_target(value, entry)
    elif key in ("expr_str", "guards_code"):
        for text in value if isinstance(value, list) else [value]:
            _check_code(text, _EXPR if key == "expr_str" else _GUARD, entry)
    elif key in ("in_spec", "out_spec"):
        _check_treespec(value, entry)
    elif isinstance(value, dict) and key not in _FREE_TEXT_KEYS:
        if "nodes" in value and isinstance(value.get("inputs"), list):
            for graph_input in value["inputs"]:  # string inputs are pasted into guard code
                if isinstance(graph_input, dict):
                    check_str(graph_input.get("as_string"), WORD, entry, "graph input")
        for k, v in value.items():
            if key == "range_constraints":
                _check_code(k, _EXPR, entry)
            else:
                check_str(k, WORD, entry, "key")
            walk(v, k, entry)
    elif isinstance(value, list) and key not in _FREE_TEXT_KEYS:
        for v in value:
            walk(v, key, entry)
    elif isinstance(value, str) and key not in _FREE_TEXT_KEYS:
        rule = FQN if key in _FQN_KEYS else _VERSION if key == "torch_version" else WORD
        check_str(value, rule, entry, key)


def check_str(value: Any, rule: re.Pattern[str], entry: str, what: str) -> None:
    """Refuse names that would inject code or reach dunder attributes in generated Python."""
    if isinstance(value, str) and (not rule.fullmatch(value) or re.search(r"(^|\.)__", value)):
        raise refuse(entry, f"{what} {value[:80]!r} is not a plain name (names are pasted into Python code)")


def _check_metadata(meta: Any, entry: str) -> None:
    """Node metadata is free text, except source_fn_stack targets, which are resolved by getattr."""
    if not isinstance(meta, dict):
        raise refuse(entry, "node metadata is not a mapping")
    for item in str(meta.get("source_fn_stack") or "").split(";"):
        target = item.rpartition(",")[2]
        if item and (not FQN.fullmatch(target) or re.search(r"(^|\.)__", target)):
            raise refuse(entry, f"source_fn_stack target {target[:80]!r} is not a dotted name")


def _check_target(target: Any, entry: str) -> None:
    """Allow only ATen/prims ops and shape arithmetic as node targets."""
    match = _OP_TARGET.fullmatch(target) if isinstance(target, str) else None
    if target in SAFE_FUNCS or target == _GRAD_MODE_HOP or (match and match[2] not in DENIED_OPS):
        return
    raise refuse(
        entry,
        f"the graph calls {str(target)[:120]!r}, which is not an ATen/prims tensor op or shape "
        "arithmetic; it would run when the model runs",
    )


def _check_code(text: Any, grammar: tuple[frozenset[str], frozenset[str]], entry: str) -> None:
    """Allow only arithmetic over known names, so sympify()/exec() cannot reach Python."""
    names, ops = grammar
    tokens: list[tokenize.TokenInfo] = []
    if isinstance(text, str) and len(text) <= 4096 and "__" not in text:
        if text.isascii() and text.isprintable():  # no newline or \r could end the exec()'d line
            try:
                tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
            except (tokenize.TokenError, SyntaxError):
                pass
    prev = ""
    for tok in tokens or [tokenize.TokenInfo(tokenize.ERRORTOKEN, str(text), (0, 0), (0, 0), "")]:
        if not _token_ok(tok, prev, names, ops):
            raise refuse(
                entry,
                f"expression {str(text)[:80]!r} has the disallowed token {tok.string[:40]!r} "
                "(shape expressions and guards are eval'd/exec'd on load)",
            )
        prev = tok.string


def _token_ok(tok: tokenize.TokenInfo, prev: str, names: frozenset[str], ops: frozenset[str]) -> bool:
    """Tell whether a token is a number, an allowed operator/name/attribute or a plain literal."""
    kind, s = tok.type, tok.string
    if s == "(" and (prev in (")", "]") or prev[:1] in _LITERAL_STARTS or _SYMBOL.fullmatch(prev)):
        return False  # calling a result or a symbol: sympy turns Symbol('exit')() into exit()
    if kind == tokenize.NAME and prev == ".":
        return s in _ATTRIBUTES
    if kind == tokenize.NAME:
        return s in names or bool(_SYMBOL.fullmatch(s) or names is _EXPR[0] and _OPAQUE_FN.match(s))
    if kind == tokenize.STRING:  # no prefix (f-strings run code); only a name or numeral inside
        inner = s[1:-1]
        return s[0] == s[-1] in "'\"" and bool(_IDENT.fullmatch(inner) or _NUMERAL.fullmatch(inner))
    if kind in (tokenize.NEWLINE, tokenize.ENDMARKER):
        return not s
    return (kind == tokenize.OP and s in ops) or (kind == tokenize.NUMBER and len(s) <= 32)


def _check_treespec(spec: Any, entry: str) -> None:
    """Allow plain containers with name keys: ep.module() pastes the keys into its code."""
    try:
        stack = [json.loads(spec)[1]]
    except (TypeError, ValueError, IndexError, KeyError):
        raise refuse(entry, "an input/output spec is not valid JSON") from None
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or node.get("type") not in _TREESPEC_TYPES:
            raise refuse(entry, f"input/output container {str(node)[:80]} is not plain")
        try:
            context = json.loads(node["context"]) if isinstance(node.get("context"), str) else None
        except ValueError:
            raise refuse(entry, "an input/output spec context is not valid JSON") from None
        for key in context if isinstance(context, list) else [] if context is None else [context]:
            if type(key) is not int:
                check_str(key if isinstance(key, str) else repr(key), _IDENT, entry, "input key")
        stack.extend(node.get("children_spec") or [])
