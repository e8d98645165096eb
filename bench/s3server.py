"""A real S3 server for the benchmarks: versitygw (built by `make test` / the bench
targets, path in JANUS_VERSITYGW) on a free loopback port, one bucket `bench`."""

import contextlib
import os
import socket
import subprocess
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def versitygw(root):
    """Serve `root` (a directory); yields the environment a janus process needs to reach it."""
    os.makedirs(f"{root}/bench")
    port = free_port()
    env = dict(os.environ, ROOT_ACCESS_KEY="k", ROOT_SECRET_KEY="s")
    server = subprocess.Popen([os.environ["JANUS_VERSITYGW"], "--port", f"127.0.0.1:{port}", "posix", root],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield dict(os.environ, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", AWS_REGION="us-east-1",
                   AWS_ENDPOINT=f"http://127.0.0.1:{port}", AWS_ALLOW_HTTP="true")
    finally:
        server.kill()
