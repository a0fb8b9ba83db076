"""Validate and encode job arguments as JSON before anything is written."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidArgumentError

_SCALARS = (str, int, float, bool, type(None))


def encode_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[str, str]:
    """Return the JSON texts of a job's positional and keyword arguments.

    Raise InvalidArgumentError naming the first value that JSON, or
    PostgreSQL's jsonb, cannot hold. Tuples are accepted and arrive as lists.
    """
    check_json_value(list(args), "args")
    check_json_value(dict(kwargs), "kwargs")
    return json.dumps(list(args), allow_nan=False), json.dumps(dict(kwargs), allow_nan=False)


def check_json_value(value: Any, path: str) -> None:
    """Raise InvalidArgumentError unless value round-trips through jsonb."""
    if isinstance(value, str):
        _check_text(value, path)
        return

    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgumentError(
            f"{path} is {value!r}, which JSON cannot represent; "
            "pass a finite number, or None or a string for a missing value"
        )

    if isinstance(value, _SCALARS):
        return

    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json_value(item, f"{path}[{index}]")
        return

    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgumentError(
                    f"{path} has the key {key!r} of type {type(key).__name__}; "
                    "JSON object keys must be strings, so convert it with str() first"
                )
            _check_text(key, f"{path} key {key!r}")
            check_json_value(item, f"{path}[{key!r}]")
        return

    raise InvalidArgumentError(
        f"{path} is {_short_repr(value)} of type {type(value).__name__}, which is not JSON; "
        "job arguments must be str, int, float, bool, None, lists or dicts with string keys "
        "(pass ids rather than objects, and convert sets to lists, bytes to text)"
    )


def _check_text(text: str, path: str) -> None:
    if "\x00" in text:
        raise InvalidArgumentError(
            f"{path} contains a NUL character (\\x00), which PostgreSQL's jsonb rejects; "
            "remove it or encode the value, for example as base64"
        )


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def decode_arguments(args: Any, kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
    """Return the stored arguments, or raise ValueError if the row is malformed."""
    if not isinstance(args, list):
        raise ValueError(f"args must be a JSON array, found {type(args).__name__}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"kwargs must be a JSON object, found {type(kwargs).__name__}")
    return args, kwargs
