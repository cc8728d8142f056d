"""Building blocks every layer shares: typed config values (parse_value, truthy, ConfigError).

The lowest layer: it may import only the standard library.
"""
