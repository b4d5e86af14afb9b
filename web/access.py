"""Who may see which sites: the viewer of a request and the store filter that follows from it.

Every read of the console goes through a :class:`Viewer`: pages check one site with :meth:`Viewer.may_see`,
queries filter by :meth:`Viewer.site_pattern` (bound as a parameter, never spliced into SQL). A site outside
the viewer's list must leave no trace — not in a page, a count, a chart or the API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Viewer:
    """A person (or tool) reading the console, and the sites they may see.

    ``sites`` holds site ids or shell-style patterns (``shop-*``); ``None`` means every site (the console
    without ``--users``, which only listens on loopback).
    """

    name: str
    sites: tuple[str, ...] | None = None
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.sites is not None:
            object.__setattr__(self, "_regex", re.compile(self.site_pattern))

    @property
    def sees_everything(self) -> bool:
        """Whether no site filter applies."""
        return self.sites is None

    @property
    def site_pattern(self) -> str:
        """An RE2-compatible regular expression that matches exactly the visible site ids (ClickHouse ``match``)."""
        if self.sites is None:
            return ".*"
        if not self.sites:
            return "$^"  # matches nothing
        # Shell-style patterns as anchored alternatives (fnmatch.translate emits Python-only syntax such as \Z).
        parts = [re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".") for pattern in self.sites]
        return "^(?:" + "|".join(parts) + ")$"

    def may_see(self, site: str) -> bool:
        """Whether this viewer may see anything of ``site``."""
        return self._regex is None or self._regex.match(site) is not None


EVERYONE = Viewer(name="local")
"""The viewer of a console started without ``--users`` (bound to loopback only)."""


def pattern_is_valid(pattern: str) -> bool:
    """Whether ``pattern`` is a site id or a shell-style pattern of site ids (the site alphabet, ``*`` and ``?``)."""
    return re.fullmatch(r"[a-z0-9._*?-]{1,64}", pattern) is not None
