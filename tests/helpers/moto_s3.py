"""A real S3 protocol server for the tests: moto's, in a thread on 127.0.0.1, with the
environment s3fs (botocore) reads pointed at it."""

import contextlib
import os
import urllib.request


@contextlib.contextmanager
def s3_server(bucket: str = "dema"):
    """Yield the endpoint URL of a fresh moto S3 server with `bucket` created; AWS_* variables point
    s3fs at it meanwhile (restored afterwards)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its buckets in process-wide state: start each server empty
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30).close()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
        yield endpoint
    finally:
        _close_sessions()
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()


def _close_sessions():
    """Close the aiohttp sessions of the cached s3fs filesystems before the cache drops them
    (aiohttp would print "Unclosed client session" when they are collected). The synchronous ones
    run on fsspec's loop; the asynchronous ones zarr made (FsspecStore) on zarr's."""
    import s3fs
    from fsspec.asyn import sync
    from zarr.core.sync import sync as zarr_sync

    for fs in list(s3fs.S3FileSystem._cache.values()):
        if getattr(fs, "_s3", None) is None:
            continue
        if fs.asynchronous:
            zarr_sync(fs._s3.__aexit__(None, None, None))
        else:
            sync(fs.loop, fs._s3.__aexit__, None, None, None)
        fs._s3 = None
