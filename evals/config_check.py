"""The sweep config's checker: small typed readers that record every problem, each naming its field
path, the bad value and what is accepted, instead of raising at the first one."""

from __future__ import annotations

import re
from typing import Any

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ConfigError(ValueError):
    """A sweep configuration with one or more problems; ``errors`` lists them, each naming its field."""

    def __init__(self, errors: list[str], source: str = "sweep config"):
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{source}: {len(self.errors)} problem(s):\n{lines}")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def type_name(v: Any) -> str:
    return type(v).__name__


class Checker:
    """Collects errors; every reader returns None (and records why) on a bad value."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def mapping(self, value: Any, path: str) -> dict | None:
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {type_name(value)} {value!r}")
            return None
        return value

    def unknown_keys(self, value: dict, allowed: set[str] | tuple[str, ...], path: str) -> None:
        for key in value:
            if key not in allowed:
                self.error(f"{path}.{key}", f"unknown key {key!r}; accepted: {', '.join(sorted(allowed))}")

    def string(self, value: Any, path: str, *, pattern: re.Pattern | None = None, accepted: str = "") -> str | None:
        if not isinstance(value, str) or not value:
            self.error(path, f"expected a non-empty string, got {type_name(value)} {value!r}")
            return None
        if pattern is not None and not pattern.match(value):
            self.error(path, f"bad value {value!r}; accepted: {accepted}")
            return None
        return value

    def integer(self, value: Any, path: str, *, minimum: int | None = None) -> int | None:
        if not is_int(value):
            self.error(path, f"expected an integer, got {type_name(value)} {value!r}")
            return None
        if minimum is not None and value < minimum:
            self.error(path, f"bad value {value!r}; accepted: an integer >= {minimum}")
            return None
        return value

    def boolean(self, value: Any, path: str) -> bool | None:
        if not isinstance(value, bool):
            self.error(path, f"expected true or false, got {type_name(value)} {value!r}")
            return None
        return value

    def list_of(self, value: Any, path: str) -> list | None:
        if not isinstance(value, list) or not value:
            self.error(path, f"expected a non-empty list, got {type_name(value)} {value!r}")
            return None
        return value
