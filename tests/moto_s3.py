"""A real S3 protocol server for the tests: moto's, in a thread on 127.0.0.1, with the
environment s3fs (botocore) reads pointed at it."""

import contextlib
import os


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
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
