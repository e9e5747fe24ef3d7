"""Reading a study's YAML (or JSON) so that what the coordinator reads is what is signed.

``yaml.safe_load`` reads YAML 1.1: a repeated key silently keeps its last value (a second
``privacy:`` block can turn ``min_sites: 5`` into ``min_sites: 1``), ``010`` is the octal 8,
``1:30`` is the sexagesimal 90 and ``no``/``off`` are false. :func:`load_study_yaml` reads
with :class:`StudyLoader` instead:

- a key repeated in any mapping, at any depth, is an error naming the key's path and both
  lines (every repeated key is reported);
- plain scalars resolve by a YAML 1.2 core-like schema: ``null``/``Null``/``NULL``/``~``/empty
  is null, ``true``/``True``/``TRUE``/``false``/``False``/``FALSE`` are booleans, ``0`` and
  decimal integers without a leading zero (``-?[1-9][0-9]*``) are integers, ``1.5``/``1e3``
  are floats. Everything else is a string: ``010``, ``0x1F``, ``0o17``, ``1_000``, ``1:30``,
  ``yes``, ``no``, ``on``, ``off`` and dates such as ``2030-12-31`` (the study parser reads
  ``YYYY-MM-DD`` strings as dates). An integer field given ``010`` is therefore an error, and a
  product code ``010`` stays the string ``"010"``;
- an explicit tag cannot bring YAML 1.1 back: ``!!int`` and ``!!bool`` accept only the forms
  above, ``!!str`` is allowed, and ``!!timestamp``, ``!!binary``, ``!!set``, ``!!omap``,
  ``!!pairs``, merge keys (``<<``) and unknown tags are errors;
- aliases (``*name``) are errors: every value is written out where it applies;
- integers have at most 18 digits.

Errors are :class:`protocol.errors.StudyFormatError` whose message gives the line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, ClassVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from protocol.errors import StudyFormatError

__all__ = ["StudyLoader", "load_study_yaml"]

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|(?:0|[1-9][0-9]*)(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_MAX_INT_DIGITS = 18

_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_STR_TAG = "tag:yaml.org,2002:str"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _line(node: Node | yaml.Event) -> int:
    mark = node.start_mark
    return int(mark.line) + 1 if mark is not None else 0


def _error(node: Node | yaml.Event, message: str) -> StudyFormatError:
    return StudyFormatError(f"line {_line(node)}: {message}")


class StudyLoader(yaml.SafeLoader):
    """A PyYAML loader with the YAML 1.2 core-like schema and the checks described above."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 - PyYAML keeps one per class
    yaml_constructors: ClassVar[dict[Any, Any]] = {}

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise _error(event, f"alias *{event.anchor} is not allowed in a study; "
                                "write the value out where it applies")
        return super().compose_node(parent, index)

    def get_single_node(self) -> Node | None:
        node = super().get_single_node()
        if node is not None:
            problems: list[str] = []
            self._check_duplicates(node, "", problems)
            if problems:
                raise StudyFormatError("; ".join(problems))
        return node

    def _check_duplicates(self, node: Node, path: str, problems: list[str]) -> None:
        if isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                self._check_duplicates(item, f"{path}[{i}]", problems)
        elif isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    raise _error(key_node, "merge keys (<<) are not allowed in a study")
                key = self.construct_object(key_node, deep=True)
                shown = key if isinstance(key, str) else repr(key)
                child = f"{path}.{shown}" if path else str(shown)
                try:
                    first = seen.get(key)
                    if first is None:
                        seen[key] = _line(key_node)
                except TypeError:  # an unhashable key; the constructor reports it
                    first = None
                if first is not None:
                    problems.append(f"{child}: duplicate key {shown!r} on line "
                                    f"{_line(key_node)} (first on line {first}); YAML would "
                                    "keep only the last value, so a study gives each key once")
                self._check_duplicates(value_node, child, problems)

    def flatten_mapping(self, node: MappingNode) -> None:
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                raise _error(key_node, "merge keys (<<) are not allowed in a study")


def _construct_null(loader: StudyLoader, node: ScalarNode) -> None:
    if not _NULL.match(loader.construct_scalar(node)):
        raise _error(node, f"{node.value!r} is not null")


def _construct_bool(loader: StudyLoader, node: ScalarNode) -> bool:
    value = loader.construct_scalar(node)
    if not _BOOL.match(value):
        raise _error(node, f"{value!r} is not a boolean; write true or false")
    return value.lower() == "true"


def _construct_int(loader: StudyLoader, node: ScalarNode) -> int:
    value = loader.construct_scalar(node)
    if not _INT.match(value):
        raise _error(node, f"{value!r} is not a decimal integer (no leading zeros, "
                           "no octal, hexadecimal, underscores or sexagesimal)")
    if len(value.lstrip("+-")) > _MAX_INT_DIGITS:
        raise _error(node, f"integer has more than {_MAX_INT_DIGITS} digits")
    return int(value)


def _construct_float(loader: StudyLoader, node: ScalarNode) -> float:
    value = loader.construct_scalar(node)
    if not _FLOAT.match(value) or len(value) > 64:
        raise _error(node, f"{value!r} is not a number")
    # YAML writes infinity and NaN as .inf and .nan; Python's float() reads inf and nan
    return float(value.replace(".", "", 1) if value.lstrip("+-").lower() in (".inf", ".nan")
                 else value)


def _construct_str(loader: StudyLoader, node: ScalarNode) -> str:
    return loader.construct_scalar(node)


def _construct_seq(loader: StudyLoader, node: SequenceNode) -> Iterator[list[Any]]:
    return loader.construct_yaml_seq(node)


def _construct_map(loader: StudyLoader, node: MappingNode) -> Iterator[dict[Any, Any]]:
    return loader.construct_yaml_map(node)


def _construct_undefined(loader: StudyLoader, node: Node) -> None:
    raise _error(node, f"the tag {node.tag} is not allowed in a study")


for _tag, _regexp, _first in (
    (_BOOL_TAG, _BOOL, list("tTfF")),
    (_INT_TAG, _INT, list("-+0123456789")),
    (_FLOAT_TAG, _FLOAT, list("-+0123456789.")),
    (_NULL_TAG, _NULL, ["~", "n", "N", ""]),
):
    StudyLoader.add_implicit_resolver(_tag, _regexp, _first)

StudyLoader.add_constructor(_NULL_TAG, _construct_null)
StudyLoader.add_constructor(_BOOL_TAG, _construct_bool)
StudyLoader.add_constructor(_INT_TAG, _construct_int)
StudyLoader.add_constructor(_FLOAT_TAG, _construct_float)
StudyLoader.add_constructor(_STR_TAG, _construct_str)
StudyLoader.add_constructor(_SEQ_TAG, _construct_seq)
StudyLoader.add_constructor(_MAP_TAG, _construct_map)
StudyLoader.add_constructor(None, _construct_undefined)


def load_study_yaml(text: str | bytes) -> Any:
    """Decode one YAML (or JSON) document with :class:`StudyLoader`.

    Raises
    ------
    StudyFormatError
        When the text is not valid YAML, repeats a key, uses an alias, a merge key or a tag
        outside the schema above; the message gives the line.
    """
    try:
        return yaml.load(text, Loader=StudyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise StudyFormatError(f"not valid YAML or JSON: {exc}") from exc
