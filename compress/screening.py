"""Refuse models that carry code: Keras configs and SavedModel graphs, read without running them.

A ``.keras`` file is a zip whose ``config.json`` names every object Keras will
instantiate. We walk that JSON ourselves before Keras sees it and refuse any
class outside ``allowlists`` (Lambda, custom or registered objects, unknown
modules); Keras then loads with ``safe_mode=True`` as a second line.

A SavedModel's ``saved_model.pb`` holds its GraphDef and function library. We
parse the protobuf (parsing runs nothing) and refuse any op outside
``GRAPH_OPS``. The saver functions TensorFlow writes next to every model need
file ops (``SaveV2``, ``RestoreV2``); those are allowed only in functions that
nothing but the saver reaches, so a serving signature can never call them.
"""

from __future__ import annotations

import importlib
import json
from collections import deque
from typing import TYPE_CHECKING, Any

from compress import _tf
from compress.allowlists import (
    GRAPH_OPS,
    KERAS_FUNCTIONS,
    KERAS_MARKERS,
    KERAS_OBJECTS,
    REFUSED_KERAS,
    REFUSED_OPS,
    SAVER_OPS,
)
from compress.errors import UnsafeModel, UnsupportedFormat

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from pathlib import Path

_MAX_CONFIG_BYTES = 64 * 1024 * 1024
_MAX_NAME = 60


def _quote(value: object) -> str:
    """Quote a name taken from the upload, bounded and printable, for a message."""
    text = "".join(char if char.isprintable() else "?" for char in str(value))
    return repr(text[:_MAX_NAME] + ("..." if len(text) > _MAX_NAME else ""))


def _objects(config: object) -> Iterator[Mapping[str, Any]]:
    """Yield every serialised object (a dict with ``class_name``) in a Keras config.

    Iterative, so a config nested ten thousand deep is walked, not a crash.
    The root's ``compile_config`` is skipped: Keras drops it when loading with
    ``compile=False`` (as we do), so it is never deserialised. Nested models'
    compile configs are walked, because Keras would compile those.
    """
    stack: list[object] = [config]
    root = True
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "class_name" in node:
                yield node
            stack.extend(
                value for key, value in node.items() if not (root and key == "compile_config")
            )
        elif isinstance(node, list):
            stack.extend(node)
        root = False


def _check_object(obj: Mapping[str, Any]) -> None:
    name = obj["class_name"]
    module = obj.get("module")
    registered = obj.get("registered_name")
    function = obj.get("config")
    if not all(isinstance(value, str | None) for value in (name, module, registered)):
        raise UnsafeModel("the .keras config is malformed (a class name is not a string)")
    if name in REFUSED_KERAS:
        raise UnsafeModel(REFUSED_KERAS[name])
    if module is None and name in KERAS_MARKERS:
        return
    if name == "function":
        if (
            module == "builtins"
            and isinstance(function, str)
            and function in KERAS_FUNCTIONS
            and registered in {None, "function", function}
        ):
            return
        raise UnsafeModel(
            f"custom function {_quote(function)} is not accepted; use Keras built-ins"
        )
    allowed = KERAS_OBJECTS.get(module) if module is not None else None
    if allowed is None or name not in allowed or registered not in {None, name}:
        raise UnsafeModel(
            f"custom or unknown Keras object {_quote(name)} is not accepted; "
            "only built-in Keras layers are",
        )


def screen_keras_config(config: object) -> None:
    """Refuse a parsed Keras ``config.json`` holding any object outside the allow-lists."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise UnsupportedFormat("the .keras file's config.json does not describe a model")
    for obj in _objects(config):
        _check_object(obj)


def screen_keras_directory(directory: Path) -> None:
    """Screen an unpacked ``.keras`` archive: its ``config.json`` must exist and pass."""
    path = directory / "config.json"
    if not path.is_file():
        raise UnsupportedFormat("the .keras file has no config.json; save with model.save()")
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise UnsupportedFormat("the .keras file's config.json is too large")
    try:
        config = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:
        raise UnsupportedFormat("the .keras file's config.json is not valid JSON") from exc
    screen_keras_config(config)


def _called(nodes: Iterable[Any], library: Mapping[str, Any]) -> set[str]:
    """Names of library functions the given NodeDefs call (by op name or function attr)."""
    names: set[str] = set()
    for node in nodes:
        if node.op in library:
            names.add(node.op)
        for value in node.attr.values():
            if value.func.name:
                names.add(value.func.name)
            names.update(func.name for func in value.list.func)
    return names


def _reachable(roots: Iterable[Any], library: Mapping[str, Any]) -> set[str]:
    seen: set[str] = set()
    queue = deque(_called(roots, library))
    while queue:
        name = queue.popleft()
        if name in seen or name not in library:
            continue
        seen.add(name)
        queue.extend(_called(library[name].node_def, library) - seen)
    return seen


def _check_ops(
    nodes: Iterable[Any], *, allowed: frozenset[str], library: Mapping[str, Any]
) -> None:
    for node in nodes:
        op = node.op
        if op in allowed or op in library:
            continue
        reason = REFUSED_OPS.get(op)
        if reason is not None:
            raise UnsafeModel(f"the SavedModel uses op {_quote(op)}, which {reason}; refused")
        if op in SAVER_OPS:
            raise UnsafeModel(f"the SavedModel uses saver op {_quote(op)} outside the saver")
        raise UnsafeModel(f"the SavedModel uses op {_quote(op)}, which is not on the allow-list")


def _screen_meta_graph(meta_graph: Any) -> None:
    graph = meta_graph.graph_def
    library = {function.signature.name: function for function in graph.library.function}
    saver = meta_graph.saver_def
    saver_roots = {
        name.split(":")[0]
        for name in (saver.save_tensor_name, saver.restore_op_name, saver.filename_tensor_name)
        if name
    }
    serving_nodes = [node for node in graph.node if node.name not in saver_roots]
    saver_nodes = [node for node in graph.node if node.name in saver_roots]
    saver_only = _reachable(saver_nodes, library) - _reachable(serving_nodes, library)
    _check_ops(graph.node, allowed=GRAPH_OPS, library=library)
    for name, function in library.items():
        allowed = GRAPH_OPS | SAVER_OPS if name in saver_only else GRAPH_OPS
        _check_ops(function.node_def, allowed=allowed, library=library)


def screen_saved_model(directory: Path) -> None:
    """Refuse a SavedModel whose graph or functions use an op outside the allow-list.

    Only TensorFlow 2 SavedModels (``tf.saved_model.save``, ``model.export()``)
    pass: TensorFlow 1 graphs keep their saver ops in the main graph, where
    they are indistinguishable from a model that writes files.
    """
    path = directory / "saved_model.pb"
    _tf.tensorflow()  # the protobuf classes live in TensorFlow's package
    saved_model_pb2 = importlib.import_module("tensorflow.core.protobuf.saved_model_pb2")
    message = saved_model_pb2.SavedModel()
    try:
        message.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError or RuntimeWarning-derived errors
        raise UnsupportedFormat("saved_model.pb is not a valid SavedModel") from exc
    if not message.meta_graphs:
        raise UnsupportedFormat("saved_model.pb holds no graph")
    for meta_graph in message.meta_graphs:
        _screen_meta_graph(meta_graph)
