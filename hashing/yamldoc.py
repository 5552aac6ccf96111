"""YAML documents that remember where each value came from.

PyYAML's loaders forget positions, and silently keep the last of two equal keys. Spec files need
both: every error names its line, and a repeated key is an error rather than a silent override.
We compose the node graph with the C parser and build plain Python values ourselves, recording
the line of every mapping value and sequence item under its path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from hashing.errors import SpecError

try:  # libyaml is optional in PyYAML; it is several times faster when present
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

_STR_TAG = "tag:yaml.org,2002:str"

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """Render a value's path the way users write it: `conda.dependencies[3].pip[0]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass(frozen=True)
class YamlDocument:
    """A parsed YAML document: its value, where it came from, and the line of every path in it."""

    value: Any
    source: str
    lines: dict[Path, int] = field(default_factory=dict)
    # first content line of each block scalar (`key: |`), which starts on the line after the key
    block_starts: dict[Path, int] = field(default_factory=dict)
    # the comment after a scalar sequence item on its last line (`- pkg  # [linux64]`)
    comments: dict[Path, str] = field(default_factory=dict)

    def line_of(self, path: Path) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    def error(self, path: Path, message: str) -> SpecError:
        """A SpecError located at `path` in this document."""
        return SpecError(
            message, source=self.source, line=self.line_of(path), field=format_path(path) or None
        )


def load_yaml(text: str, source: str) -> YamlDocument:
    """Parse one YAML document; raise SpecError (with line) when it is not valid YAML."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        builder = _Builder(loader, source)
        value = None if node is None else builder.build(node, ())
        comments = _comments(text, builder.ends) if "#" in text else {}
        return YamlDocument(value, source, builder.lines, builder.blocks, comments)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(f"invalid YAML: {problem}", source=source, line=line) from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", source=source) from exc
    finally:
        loader.dispose()


class _Builder:
    """Turns composed nodes into Python values, recording the line of every path."""

    def __init__(self, loader: yaml.SafeLoader, source: str) -> None:
        self.loader = loader
        self.source = source
        self.lines: dict[Path, int] = {}
        self.blocks: dict[Path, int] = {}
        # where each scalar sequence item ends: (line, column), both from 0
        self.ends: dict[Path, tuple[int, int]] = {}
        self._seen: set[int] = set()

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            if node.style in ("|", ">"):
                self.blocks[path] = node.start_mark.line + 2
            if node.tag == _STR_TAG:  # the common case; skip the constructor machinery
                return node.value
            return self.loader.construct_object(node, deep=True)
        if id(node) in self._seen:  # an alias: the composer hands out the anchored node again
            raise SpecError(
                "YAML aliases (*name) are not supported in spec files: write the value out",
                source=self.source,
                line=node.start_mark.line + 1,
                field=format_path(path) or None,
            )
        self._seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            return self._sequence(node, path)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        raise SpecError(f"unsupported YAML node {node.tag}", source=self.source)  # pragma: no cover

    def _sequence(self, node: yaml.SequenceNode, path: Path) -> list[Any]:
        out = []
        for i, item in enumerate(node.value):
            if item.tag == _STR_TAG and item.style is None and type(item) is yaml.ScalarNode:
                # plain strings are most of a spec's nodes (dependencies): no call per item
                self.lines[(*path, i)] = item.start_mark.line + 1
                self.ends[(*path, i)] = (item.end_mark.line, item.end_mark.column)
                out.append(item.value)
            else:
                if isinstance(item, yaml.ScalarNode):
                    self.ends[(*path, i)] = (item.end_mark.line, item.end_mark.column)
                out.append(self.build(item, (*path, i)))
        return out

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError(
                    "mapping keys must be plain scalars",
                    source=self.source,
                    line=line,
                    field=format_path(path) or None,
                )
            # keys are names, taken as written: YAML 1.1 would read `ON:` as True, `010:` as 8
            key: str = key_node.value
            if key in out:
                raise SpecError(
                    f"key {key!r} appears twice (first on line {self.lines[(*path, key)]})",
                    source=self.source,
                    line=line,
                    field=format_path((*path, key)),
                )
            out[key] = self.build(value_node, (*path, key))
            self.lines[(*path, key)] = line  # errors about a value point at its key
        return out


def _comments(text: str, ends: dict[Path, tuple[int, int]]) -> dict[Path, str]:
    """The comment that follows each item on the line where it ends, without its `#`."""
    lines = text.splitlines()
    out: dict[Path, str] = {}
    for path, (line, column) in ends.items():
        if line < len(lines):
            rest = lines[line][column:].lstrip()
            if rest.startswith("#"):
                out[path] = rest[1:].strip()
    return out
