"""Building blocks every layer shares: typed config values (parse_value, truthy, ConfigError) and
child processes that die with their parent (process).

The lowest layer: it may import only the standard library.
"""
