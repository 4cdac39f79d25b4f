"""Loading the reviewed YAML files under ``policies/`` with line numbers.

A validation error is reported as ``file:line: path: message`` so that a
reviewer can go straight to the offending line.

The YAML files are the source of truth. The function's package may also hold
``policies/parsed.json`` (written by ``function/build.py`` with ``write_parsed``):
each file's validated content as JSON, with the SHA-256 of the YAML it came from.
``parse_file`` uses that form only while the YAML file's bytes still have that
digest, and validates it with the same model, so the answer is the YAML's; it only
spares a cold start the YAML parser. Anything else (no such file, another digest, a
form that does not validate) is read from the YAML.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from deploy_helper.exceptions import PolicyFileError

if TYPE_CHECKING:
    import yaml

M = TypeVar("M", bound=BaseModel)

#: The pre-parsed form of the YAML files of one directory (see the module's docstring).
PARSED_FILE = "parsed.json"
PARSED_VERSION = 1


@functools.cache
def _line_loader() -> type[yaml.SafeLoader]:
    """A safe loader (libyaml's parser where available) that refuses duplicate keys."""
    import yaml

    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class LineLoader(base):
        """A safe loader that refuses duplicate mapping keys."""

    def construct_mapping(loader: Any, node: yaml.MappingNode) -> dict[Any, Any]:
        loader.flatten_mapping(node)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return dict(loader.construct_mapping(node, deep=True))

    LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return LineLoader


@dataclass
class LoadedFile:
    path: Path
    data: Any
    text: str = ""
    _root: Any = field(default=None, repr=False)

    @property
    def root(self) -> yaml.Node | None:
        """The YAML node tree (composed on first use: only errors and checks need lines)."""
        if self._root is None and self.text:
            import yaml

            self._root = yaml.compose(self.text, Loader=_line_loader())
        return self._root

    def line_of(self, loc: tuple[Any, ...]) -> int:
        """1-based line of the node at ``loc`` (as deep as it exists)."""
        import yaml

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


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PolicyFileError(f"{path}: cannot read: {exc.strerror}") from exc


def _from_yaml(path: Path, raw: bytes) -> LoadedFile:
    import yaml

    try:
        text = raw.decode("utf-8")
        data = yaml.load(text, Loader=_line_loader())  # noqa: S506 - a SafeLoader subclass
    except UnicodeDecodeError as exc:
        raise PolicyFileError(f"{path}: not UTF-8 text: {exc.reason}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise PolicyFileError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    return LoadedFile(path, data, text)


def load_yaml(path: Path) -> LoadedFile:
    return _from_yaml(path, _read(path))


def format_errors(loaded: LoadedFile, exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        where = ".".join(str(p) for p in loc) or "(top)"
        out.append(f"{loaded.path}:{loaded.line_of(loc)}: {where}: {error['msg']}")
    return out


def _parsed_form(path: Path, digest: str) -> str | None:
    """The pre-parsed JSON of ``path`` if ``policies/parsed.json`` holds it for exactly these bytes."""
    try:
        parsed = json.loads((path.parent / PARSED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = parsed.get("files", {}).get(path.name) if isinstance(parsed, dict) else None
    if parsed.get("version") != PARSED_VERSION or not isinstance(entry, dict) or entry.get("sha256") != digest:
        return None
    text = entry.get("json")
    return text if isinstance(text, str) else None


def parse_file(path: Path, model: type[M]) -> tuple[M, LoadedFile]:
    """Load ``path`` and validate it as ``model``; errors name file and line."""
    raw = _read(path)
    parsed = _parsed_form(path, hashlib.sha256(raw).hexdigest())
    if parsed is not None:
        try:
            return model.model_validate_json(parsed), LoadedFile(path, None, raw.decode("utf-8"))
        except (ValidationError, UnicodeDecodeError):
            pass  # the YAML says why, with its lines
    loaded = _from_yaml(path, raw)
    try:
        return model.model_validate(loaded.data), loaded
    except ValidationError as exc:
        raise PolicyFileError("\n".join(format_errors(loaded, exc))) from exc


def write_parsed(directory: Path, models: dict[str, type[BaseModel]]) -> Path:
    """Write ``directory/parsed.json``: each named YAML file validated, as JSON with its digest.

    A file whose JSON form would not validate back to the same value is refused
    (``PolicyFileError``): the broker must read from it exactly what it would read
    from the YAML.
    """
    files: dict[str, dict[str, str]] = {}
    for name, model in models.items():
        path = directory / name
        raw = _read(path)
        loaded = _from_yaml(path, raw)
        try:
            value = model.model_validate(loaded.data)
        except ValidationError as exc:
            raise PolicyFileError("\n".join(format_errors(loaded, exc))) from exc
        text = value.model_dump_json(round_trip=True)
        if model.model_validate_json(text) != value:
            raise PolicyFileError(f"{path}: its JSON form does not read back the same; keep only the YAML")
        files[name] = {"sha256": hashlib.sha256(raw).hexdigest(), "json": text}
    out = directory / PARSED_FILE
    out.write_text(json.dumps({"version": PARSED_VERSION, "files": files}, indent=1) + "\n", encoding="utf-8")
    return out
