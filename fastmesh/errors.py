"""Public error types: ConfigError (one problem in a config), ConfigErrors (all problems found in one config) and
PluginError (a plugin reference that names nothing usable)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["ConfigError", "ConfigErrors", "PluginError"]


class ConfigError(Exception):
    """A config that cannot be used, reported as `file: key: expected X, got Y`.

    file      the file name as given (or "<string>", "<dict>")
    key       the key path, like `clusters.echo.endpoints[1]`; "" when the problem is the whole file
    expected  what would have been accepted, as the message words it (`"host:port"`, `one of [...]`)
    got       what was found, spelled as in TOML (`"10.0.0.1"`, `0`, `a table`), or None when nothing is shown
    reason    the text after the key: "expected X, got Y" unless the problem is about the key itself
              (unknown key, missing key) or the file (syntax error, unreadable)
    """

    def __init__(self, file: str, key: str, expected: str, got: str | None = None, *,
                 reason: str | None = None) -> None:
        self.file = file
        self.key = key
        self.expected = expected
        self.got = got
        if reason is None:
            reason = f"expected {expected}" if got is None else f"expected {expected}, got {got}"
        self.reason = reason
        super().__init__(str(self))

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        """Every problem found; a single error lists itself, so callers can always iterate."""
        return (self,)

    def __str__(self) -> str:
        where = f"{self.key}: " if self.key else ""
        return f"{self.file}: {where}{self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        # The constructor takes more than the message, so pickling (errors sent between worker processes)
        # has to say how to rebuild it.
        return (_rebuild, (self.file, self.key, self.expected, self.got, self.reason))


class ConfigErrors(ConfigError):
    """Several problems in one config: str() gives one per line, the attributes are those of the first."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        if not errors:
            raise ValueError("ConfigErrors needs at least one error")
        self._errors = tuple(errors)
        first = self._errors[0]
        super().__init__(first.file, first.key, first.expected, first.got, reason=first.reason)

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        return self._errors

    def __str__(self) -> str:
        return "\n".join(ConfigError.__str__(e) for e in self._errors)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ConfigErrors, (self._errors,))


class PluginError(Exception):
    """A plugin reference ("package.module:Name" or an entry-point name) that cannot be used: `ref` and what a
    usable one would be. The config loader turns it into a ConfigError at the key that names the plugin."""

    def __init__(self, ref: str, expected: str) -> None:
        self.ref = ref
        self.expected = expected
        super().__init__(f"plugin {ref!r}: expected {expected}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (PluginError, (self.ref, self.expected))


def _rebuild(file: str, key: str, expected: str, got: str | None, reason: str) -> ConfigError:
    return ConfigError(file, key, expected, got, reason=reason)
