"""Storage options of remote stores (fsspec URLs: s3://, gs://, memory://, ...).

`--storage-option KEY=VALUE` (any command with --store) becomes fsspec configuration for the
store's protocol, so that every filesystem fsspec makes for it (the store's zarr groups, the run
locks, the uploads) gets it, and is exported as FSSPEC_<PROTOCOL> (JSON, read by fsspec when it is
imported) so that sweep workers and Ray tasks get it too. Without options, the filesystem reads
the environment itself: for s3://, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
AWS_DEFAULT_REGION, AWS_PROFILE (s3fs through botocore).

    dema-lab sweep --store s3://bucket/study --storage-option endpoint_url=http://127.0.0.1:9000 \\
        --storage-option key=KEY --storage-option secret=SECRET
"""

from __future__ import annotations

import contextlib
import json
import os

from dema_lab.common.values import FALSE, TRUE

# What a cluster's workers need to reach the store the way the driver does.
FORWARDED_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


def option_value(text: str):
    """A storage option's value, untyped on the command line: true/false (yes/no, on/off), numbers
    and JSON objects or lists are typed; anything else stays a string."""
    low = text.lower()
    if low in TRUE[1:] + FALSE[1:]:  # not "1"/"0": those stay numbers
        return low in TRUE
    if text[:1] in "{[" or text.lstrip("-").replace(".", "", 1).isdigit():
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def parse_storage_options(items) -> dict:
    """`KEY=VALUE` strings as a dict of typed values; a malformed item raises ValueError."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"--storage-option takes KEY=VALUE (e.g. endpoint_url=http://127.0.0.1:9000), got {item!r}"
            )
        out[key.strip()] = option_value(value)
    return out


def apply_storage_options(url: str, items) -> dict:
    """Make `items` (KEY=VALUE) the storage options of `url`'s protocol, in this process (fsspec's
    config) and its children (FSSPEC_<PROTOCOL>). Returns the protocol's options."""
    options = parse_storage_options(items)
    if not options:
        return {}
    if "://" not in str(url):
        raise ValueError(
            f"--storage-option is for stores at fsspec URLs (s3://bucket/prefix, ...); {url} is a local path"
        )
    import fsspec.config

    protocol = str(url).split("://", 1)[0]
    merged = {**fsspec.config.conf.get(protocol, {}), **options}
    fsspec.config.conf[protocol] = merged
    os.environ[f"FSSPEC_{protocol.upper()}"] = json.dumps(merged)
    return merged


@contextlib.contextmanager
def storage_options(url, items):
    """apply_storage_options for the duration of a block (one command): afterwards this process's
    fsspec config and environment are as they were, so that a later command in the same process
    (a notebook, a test) does not inherit another store's endpoint or credentials."""
    if not items:
        yield {}
        return
    import fsspec.config

    protocol = str(url).split("://", 1)[0]
    key = f"FSSPEC_{protocol.upper()}"
    before_conf, before_env = fsspec.config.conf.get(protocol), os.environ.get(key)
    try:
        yield apply_storage_options(url, items)
    finally:
        if before_conf is None:
            fsspec.config.conf.pop(protocol, None)
        else:
            fsspec.config.conf[protocol] = before_conf
        if before_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before_env


def forwarded_env() -> dict:
    """The environment variables that carry storage options and credentials to remote workers."""
    return {k: v for k, v in os.environ.items() if k in FORWARDED_ENV or k.startswith("FSSPEC_")}
