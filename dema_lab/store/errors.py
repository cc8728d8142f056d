"""The store's errors: one hierarchy under StoreError, so every caller catches one type."""

from __future__ import annotations


class StoreError(ValueError):
    """A store or run that is missing, not a dema-lab store, or unreadable."""


class IntegrityError(StoreError):
    """A stored blob (a checkpoint, a resume state) whose bytes are damaged: unreadable, or not
    matching the SHA-256 written with it."""


class EmptyStoreError(StoreError):
    """A store path that does not exist yet, or an empty directory: no runs, nothing wrong."""


class StoreFullError(StoreError):
    """The store's device is full (ENOSPC) while writing: names the store and what to do."""
