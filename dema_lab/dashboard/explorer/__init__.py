"""The attention explorer page: its param-only state (state) and its renderer (view)."""
