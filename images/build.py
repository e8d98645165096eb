#!/usr/bin/env python3
"""Daemonless image builder: assembles the project's container images without a
Docker engine or a registry, as OCI image archives that `ctr images import` (and
`docker load`, `podman load`, `skopeo copy oci-archive:`) read.

    images/build.py IMAGE --tag REF --out FILE.tar [--binary PATH] [--debs DIR]

IMAGE is one of the images below. Each is the equivalent of its Dockerfile in this
folder: a root filesystem from Debian packages (fetched with `apt-get download` into
--debs, a cache, and unpacked with `dpkg-deb -x`; no maintainer scripts run, as in a
distroless image) plus our binary, a non-root user, and the same entrypoint and
environment. The same inputs give byte-identical archives (sorted tar entries, fixed
timestamps and owners, uncompressed layers), so an unchanged image imports as a no-op.

Two layers per image: the Debian base (shared by the operator and trainer images when
their package sets agree) and the application layer.
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# Epoch of every file in the archives (the Debian packages' own mtimes are kept out so
# that the layers depend only on contents).
EPOCH = 0
NONROOT = 65532

# The RDMA packages of the trainer image (images/trainer.Dockerfile installs the same).
RDMA_DEBS = ["libibverbs1", "ibverbs-providers", "librdmacm1", "ibverbs-utils"]

# What each image is. `debs`: Debian packages of the base layer; `binary`: where our
# binary goes; everything else mirrors the Dockerfile's USER / ENTRYPOINT / ENV.
IMAGES = {
    # images/operator.Dockerfile: gcr.io/distroless/cc-debian12:nonroot + janus-operator.
    "operator": {
        "debs": ["libc6", "libgcc-s1"],
        "binary": "/usr/local/bin/janus-operator",
        "entrypoint": ["/usr/local/bin/janus-operator"],
        "user": f"{NONROOT}:{NONROOT}",
        "env": [],
        "ca_certificates": True,
    },
    # images/trainer.Dockerfile without the 4.6 GB PyTorch: the CPU test image. libtorch
    # comes from the project venv, mounted by the test at LIBTORCH_MOUNT (a hostPath
    # volume; see tests/e2e), and found through LD_LIBRARY_PATH.
    "trainer-cpu": {
        # libstdc++ for libtorch; rdma-core's libibverbs, providers, librdmacm and
        # ibv_devinfo (with the netlink libraries they link) as the GPU image installs.
        "debs": ["libc6", "libgcc-s1", "libstdc++6"] + RDMA_DEBS + ["libnl-3-200", "libnl-route-3-200"],
        "binary": "/usr/local/bin/janus",
        "entrypoint": [],
        "cmd": ["/usr/local/bin/janus", "--help"],
        "user": "1000:1000",
        "env": [
            "LD_LIBRARY_PATH=/opt/libtorch/torch/lib",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "HOME=/tmp",
        ],
        "ca_certificates": True,
    },
    # The pod sandbox of the test node (tests/controlplane/pause.c, static).
    "pause": {
        "debs": [],
        "binary": "/pause",
        "entrypoint": ["/pause"],
        "user": f"{NONROOT}:{NONROOT}",
        "env": [],
        "ca_certificates": False,
    },
    # Cluster DNS of the test node (tests/controlplane/coredns, static Go binary).
    "coredns": {
        "debs": [],
        "binary": "/coredns",
        "entrypoint": ["/coredns"],
        "user": f"{NONROOT}:{NONROOT}",
        "env": [],
        "ca_certificates": False,
    },
}

LIBTORCH_MOUNT = "/opt/libtorch"


def sha256(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


class Layer:
    """A tar layer built in memory with normalised metadata."""

    def __init__(self):
        self.entries = {}  # path -> (TarInfo, bytes | None)

    def _info(self, path, kind, mode, uid=0, gid=0):
        ti = tarfile.TarInfo(path.lstrip("/"))
        ti.type, ti.mode, ti.uid, ti.gid = kind, mode, uid, gid
        ti.mtime, ti.uname, ti.gname = EPOCH, "", ""
        return ti

    def dir(self, path, mode=0o755, uid=0, gid=0):
        parts = Path(path.lstrip("/")).parts
        if not parts:
            return
        for i in range(1, len(parts)):
            p = "/".join(parts[:i])
            self.entries.setdefault(p, (self._info(p, tarfile.DIRTYPE, 0o755), None))
        p = "/".join(parts)
        self.entries[p] = (self._info(p, tarfile.DIRTYPE, mode, uid, gid), None)

    def file(self, path, data: bytes, mode=0o644):
        self.dir(str(Path(path).parent))
        ti = self._info(path, tarfile.REGTYPE, mode)
        ti.size = len(data)
        self.entries[ti.name] = (ti, data)

    def symlink(self, path, target):
        self.dir(str(Path(path).parent))
        ti = self._info(path, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.entries[ti.name] = (ti, None)

    def tree(self, root: Path):
        """Add a directory tree (an unpacked package), keeping modes and links."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                full = Path(dirpath) / name
                rel = "/" + str(full.relative_to(root))
                st = full.lstat()
                if full.is_symlink():
                    self.symlink(rel, os.readlink(full))
                elif full.is_dir():
                    self.dir(rel, st.st_mode & 0o7777)
                else:
                    self.file(rel, full.read_bytes(), st.st_mode & 0o7777)

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
            for name in sorted(self.entries):
                ti, data = self.entries[name]
                t.addfile(ti, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def fetch_debs(names, cache: Path):
    """Download (once) the candidate version of each package; returns (name, version, path)."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        version = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True
        ).stdout.strip()
        if not version:
            version = subprocess.run(
                ["apt-cache", "policy", name], capture_output=True, text=True, check=True
            ).stdout
            version = next(
                (l.split()[1] for l in version.splitlines() if "Candidate:" in l), ""
            )
        if not version or version == "(none)":
            sys.exit(f"build.py: Debian package {name} is not available (apt-get update first?)")
        found = sorted(cache.glob(f"{name}_{version.replace(':', '%3a')}_*.deb"))
        if not found:
            cmd = ["apt-get", "download", "-q", f"{name}={version}"]
            if subprocess.run(cmd, cwd=cache).returncode != 0:
                # A machine whose package lists were never fetched (or are stale).
                subprocess.run(["apt-get", "update", "-qq"], check=True)
                subprocess.run(cmd, cwd=cache, check=True)
            found = sorted(cache.glob(f"{name}_{version.replace(':', '%3a')}_*.deb"))
        if not found:
            sys.exit(f"build.py: apt-get download {name}={version} left no .deb in {cache}")
        out.append((name, version, found[0]))
    return out


def base_layer(spec, debs_dir: Path):
    layer = Layer()
    debs = fetch_debs(spec["debs"], debs_dir)
    with tempfile.TemporaryDirectory() as d:
        for _, _, deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), d], check=True)
        # Documentation and manual pages are not needed at run time.
        for sub in ["usr/share/doc", "usr/share/man", "usr/share/lintian", "usr/share/info"]:
            subprocess.run(["rm", "-rf", str(Path(d) / sub)], check=True)
        if any(Path(d).iterdir()):
            layer.tree(Path(d))
    # Debian's merged /usr: the loader path /lib64/ld-linux-x86-64.so.2 must resolve.
    if spec["debs"]:
        for link, target in [("/lib", "usr/lib"), ("/lib64", "usr/lib64"), ("/bin", "usr/bin"), ("/sbin", "usr/sbin")]:
            if link.lstrip("/") not in layer.entries:
                layer.symlink(link, target)
    layer.file(
        "/etc/passwd",
        f"root:x:0:0:root:/root:/sbin/nologin\n"
        f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
        f"janus:x:1000:1000:janus:/tmp:/sbin/nologin\n".encode(),
    )
    layer.file("/etc/group", f"root:x:0:\nnonroot:x:{NONROOT}:\njanus:x:1000:\n".encode())
    layer.file("/etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")
    layer.dir("/tmp", 0o1777)
    layer.dir("/home/nonroot", 0o700, NONROOT, NONROOT)
    if spec["ca_certificates"]:
        # The bundle Debian's ca-certificates package generates (update-ca-certificates
        # in its maintainer script, which unpacking alone would not run).
        bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        if not bundle.exists():
            sys.exit("build.py: /etc/ssl/certs/ca-certificates.crt missing (apt-get install ca-certificates)")
        layer.file("/etc/ssl/certs/ca-certificates.crt", bundle.read_bytes())
    return layer, [(n, v) for n, v, _ in debs]


def app_layer(spec, binary: Path):
    layer = Layer()
    layer.file(spec["binary"], binary.read_bytes(), 0o755)
    if spec["binary"] == "/usr/local/bin/janus":
        layer.dir(LIBTORCH_MOUNT)
    return layer


def build(image: str, ref: str, binary: Path, debs_dir: Path):
    spec = IMAGES[image]
    base, packages = base_layer(spec, debs_dir)
    layers = [base.tar(), app_layer(spec, binary).tar()]
    diff_ids = [sha256(l) for l in layers]
    labels = {
        "org.opencontainers.image.title": image,
        "org.opencontainers.image.ref.name": ref,
        "dev.janus.debian-packages": " ".join(f"{n}={v}" for n, v in packages),
        "dev.janus.built-by": "images/build.py",
    }
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "User": spec["user"],
            "Env": spec["env"] or ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "Entrypoint": spec["entrypoint"] or None,
            "Cmd": spec.get("cmd"),
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": "1970-01-01T00:00:00Z", "created_by": f"debian packages: {labels['dev.janus.debian-packages'] or 'none'}"},
            {"created": "1970-01-01T00:00:00Z", "created_by": f"COPY {binary.name} {spec['binary']}"},
        ],
    }
    config_b = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config_b),
            "size": len(config_b),
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(l)}
            for d, l in zip(diff_ids, layers)
        ],
    }
    manifest_b = json.dumps(manifest, sort_keys=True).encode()
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha256(manifest_b),
                "size": len(manifest_b),
                "platform": {"architecture": "amd64", "os": "linux"},
                # containerd names the image after the first; OCI tools after the second.
                "annotations": {
                    "io.containerd.image.name": ref,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    # `docker load` reads manifest.json (the same blobs).
    docker = [
        {
            "Config": f"blobs/sha256/{sha256(config_b)[7:]}",
            "RepoTags": [ref],
            "Layers": [f"blobs/sha256/{d[7:]}" for d in diff_ids],
        }
    ]
    blobs = {sha256(b): b for b in [config_b, manifest_b, *layers]}
    out = Layer()
    out.file("/oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    out.file("/index.json", json.dumps(index, sort_keys=True).encode())
    out.file("/manifest.json", json.dumps(docker, sort_keys=True).encode())
    for d, b in blobs.items():
        out.file(f"/blobs/sha256/{d[7:]}", b)
    return out.tar(), sha256(manifest_b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", choices=sorted(IMAGES))
    ap.add_argument("--tag", required=True, help="image reference, e.g. ghcr.io/janus/janus-operator:0.1.0")
    ap.add_argument("--binary", required=True, type=Path, help="the binary the image runs")
    ap.add_argument("--out", required=True, type=Path, help="OCI archive to write")
    ap.add_argument(
        "--debs",
        type=Path,
        default=Path(os.environ.get("JANUS_CACHE", Path.home() / ".cache/janus")) / "debs",
        help="cache of downloaded Debian packages",
    )
    a = ap.parse_args()
    if not a.binary.is_file():
        sys.exit(f"build.py: {a.binary}: no such file")
    archive, digest = build(a.image, a.tag, a.binary, a.debs)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(a.out.suffix + ".tmp")
    tmp.write_bytes(archive)
    tmp.replace(a.out)
    print(f"{a.tag} {digest} {a.out} ({len(archive) >> 20} MiB)")


if __name__ == "__main__":
    main()
