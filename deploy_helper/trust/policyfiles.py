"""Loading the reviewed YAML files under ``policies/`` with line numbers.

A validation error is reported as ``file:line: path: message`` so that a
reviewer can go straight to the offending line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from deploy_helper.exceptions import PolicyFileError

if TYPE_CHECKING:
    from pathlib import Path

M = TypeVar("M", bound=BaseModel)


class _LineLoader(yaml.SafeLoader):
    """A safe loader that remembers the line of every mapping key and sequence item."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass
class LoadedFile:
    path: Path
    data: Any
    root: yaml.Node | None

    def line_of(self, loc: tuple[Any, ...]) -> int:
        """1-based line of the node at ``loc`` (as deep as it exists)."""
        node = self.root
        line = node.start_mark.line + 1 if node is not None else 1
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                match = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
                if match is None:
                    break
                node = match
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            else:
                break
            line = node.start_mark.line + 1
        return line


def load_yaml(path: Path) -> LoadedFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyFileError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        root = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise PolicyFileError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    return LoadedFile(path, data, root)


def format_errors(loaded: LoadedFile, exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        where = ".".join(str(p) for p in loc) or "(top)"
        out.append(f"{loaded.path}:{loaded.line_of(loc)}: {where}: {error['msg']}")
    return out


def parse_file(path: Path, model: type[M]) -> tuple[M, LoadedFile]:
    """Load ``path`` and validate it as ``model``; errors name file and line."""
    loaded = load_yaml(path)
    try:
        return model.model_validate(loaded.data), loaded
    except ValidationError as exc:
        raise PolicyFileError("\n".join(format_errors(loaded, exc))) from exc
