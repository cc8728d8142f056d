"""Compiled CPU kernels (numba) of the selective scan and its hidden attention; their shared
helpers (FASTMATH, KERNEL_LOCK, set_threads) are public inside this package."""
