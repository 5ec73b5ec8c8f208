"""Reading a config file's YAML: bounded in size, UTF-8, and a key given twice in one mapping is
an error naming both lines (PyYAML keeps the last one silently). Every problem is a ConfigError
naming the file, never a traceback."""
from __future__ import annotations

from typing import Any

import yaml

from .checks import MAX_FILE_BYTES, ConfigError


class TextFileError(Exception):
    """A file that cannot be read as UTF-8 text within its size bound; str() is the problem."""


class FileMissing(TextFileError):
    """The file does not exist (callers that answer that differently catch this one)."""


def read_utf8(path: str, max_bytes: int, what: str = "config file") -> str:
    """The text of `path`: at most `max_bytes`, UTF-8 (a BOM is dropped). Every problem is a
    TextFileError in words (never a traceback); `what` names the kind of file in them."""
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise FileMissing("file not found") from None
    except IsADirectoryError:
        raise TextFileError(f"is a directory, not a {what}") from None
    except OSError as e:
        raise TextFileError(f"cannot read: {e.strerror or e}") from None
    except ValueError as e:   # e.g. a NUL in the path
        raise TextFileError(f"cannot read: {e}") from None
    if len(raw) > max_bytes:
        raise TextFileError(f"larger than {max_bytes} bytes ({max_bytes >> 20} MiB): not a {what}?")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise TextFileError(f"not UTF-8 text: byte 0x{raw[e.start]:02x} at line {line} "
                            f"(offset {e.start})") from None


def read_yaml(path: str) -> Any:
    """The YAML document in `path`: at most MAX_FILE_BYTES, UTF-8, no duplicate keys. Every
    problem is a ConfigError (never a traceback)."""
    try:
        text_ = read_utf8(path, MAX_FILE_BYTES)
    except TextFileError as e:
        raise ConfigError(path, [("", str(e))]) from None
    return parse_yaml(text_, path)


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE = "tag:yaml.org,2002:merge"


def safe_load(text_: str) -> Any:
    """yaml.safe_load through libyaml when PyYAML has it: a 5,000-task batch file loads in
    0.20 s instead of 1.19 s. Same documents; bad input is a yaml.YAMLError (libyaml's encoder
    refuses a lone surrogate with UnicodeEncodeError, the pure loader with a ReaderError)."""
    try:
        return yaml.load(text_, Loader=_Loader)
    except UnicodeEncodeError as e:
        raise yaml.YAMLError(f"not valid Unicode text at character {e.start}") from None


def parse_yaml(text_: str, path: str = "<string>") -> Any:
    """yaml.safe_load, but a key given twice in one mapping (at any depth) is an error naming the
    key and both lines. Merge keys (`<<: *base`) may be overridden, as YAML intends."""
    loader = _Loader(text_)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        dup = _first_duplicate(node, loader)
        if dup is not None:
            key, first, again = dup
            raise ConfigError(path, [(key, f"duplicate key (line {first}, again at line {again})")])
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(path, [("", f"invalid YAML: {yaml_problem(e)}")]) from None
    except RecursionError:
        raise ConfigError(path, [("", "invalid YAML: nested too deeply")]) from None
    finally:
        loader.dispose()


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: `line L, column C: problem` when it has a place."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(e, "problem", None) or str(e)
    return where + " ".join(str(problem).split())


def _key_text(node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return node.value
    return f"<{node.id}>"


def _scalar_key(knode, loader) -> Any:
    if not isinstance(knode, yaml.ScalarNode):
        return None
    try:
        key = loader.construct_object(knode)
        hash(key)
        return ("v", key)
    except Exception:
        return ("t", knode.tag, knode.value)


def _first_duplicate(root, loader) -> tuple[str, int, int] | None:
    """(dotted key, first line, second line) of the first key given twice, or None. Iterative,
    and each node is visited once (aliases share nodes)."""
    seen_nodes: set[int] = set()
    stack = [(root, "")]
    while stack:
        node, prefix = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: dict[Any, int] = {}
            for knode, vnode in node.value:
                if knode.tag == _MERGE:
                    stack.append((vnode, prefix))
                    continue
                name = _key_text(knode)
                # the key as YAML constructs it: 1 and 0x1 (or 1 and true) would land on the
                # same dict entry, so they are duplicates too
                ident = _scalar_key(knode, loader)
                line = knode.start_mark.line + 1
                sub = f"{prefix}.{name}" if prefix else name
                if ident is not None and ident in keys:
                    return sub, keys[ident], line
                if ident is not None:
                    keys[ident] = line
                stack.append((vnode, sub))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                stack.append((item, f"{prefix}[{i}]"))
    return None
