"""The live rollout page: its param-only state and rollout worker (state), and its renderer (view)."""
