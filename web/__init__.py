"""The read-only web console over the store: the page every notification's ``link`` opens (docs/web.md)."""
