"""Connecting the driver to Ray: an embedded single-node instance kept on 127.0.0.1, or a
running cluster, failing fast with one line when nothing answers."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import tempfile
from pathlib import Path

from fundus_search.search.errors import ClusterError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30
_OBJECT_STORE_BYTES = 2 * 1024**3  # embedded Ray: bounded, the image cache is the only big object
# Ray 2.60 moves a node's address off 127.0.0.1 to the machine's network address, and its
# servers (GCS, raylet, workers, agents, metrics) then listen on every interface, unless this
# switch is 0: the node then stays on 127.0.0.1 and so do all its servers. Ray reads it at
# import, in each of its processes; a single-node instance loses nothing by it.
_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def connect(address: str | None) -> None:
    """Join the cluster at `address`, or start an embedded local Ray without a dashboard whose
    every server listens on 127.0.0.1 (proven by tests/test_evaluation.py and tests/test_cluster.py).

    Raises:
        ClusterError: nothing answers at `address` (within CONNECT_TIMEOUT_S).
    """
    import ray
    from ray._private import ray_constants

    # We keep one checkpoint per trial (CheckpointConfig(num_to_keep=1)), which makes Tune
    # snapshot its state on every report and warn about it each time; the cost is small here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    if address:
        check_address(address)
        os.environ.setdefault("RAY_py_gcs_connect_timeout_s", str(CONNECT_TIMEOUT_S))
        if _is_loopback(address):  # a cluster/local.sh cluster: this driver stays on 127.0.0.1 too,
            os.environ[_LOOPBACK_SWITCH] = "0"  # or Ray looks for its GCS at the network address
            ray_constants.ENABLE_RAY_CLUSTER = False
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except ConnectionError as exc:
            raise ClusterError(
                f"Ray address {address}: cannot connect ({str(exc).splitlines()[0]}); start the "
                "cluster or fix the address"
            ) from None
        return
    os.environ[_LOOPBACK_SWITCH] = "0"  # for the processes Ray starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # for this one, which imported Ray already
    with _private_files():  # the auth token Ray may write, its logs and sockets: owner only
        # address="local": always a new embedded instance, never a cluster found on this machine
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            _temp_dir=str(private_temp_dir()),
            object_store_memory=_OBJECT_STORE_BYTES,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    tighten_token_file()


def alive_nodes() -> list[dict]:
    """The connected Ray's nodes that are alive (`ray.nodes()` also lists the dead)."""
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]


def _host_port(address: str) -> tuple[str, str]:
    """`HOST:PORT` or `ray://HOST:PORT` -> (host, port); empty parts where it is neither."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host, port


def _is_loopback(address: str) -> bool:
    host, _ = _host_port(address)
    return host == "localhost" or host.startswith("127.")


def check_address(address: str) -> None:
    """Fail fast, naming the address, when nothing answers there: `ray.init` would retry for minutes.

    Raises:
        ClusterError: no server listens at `address`.
    """
    if address == "auto":
        return  # ray.init finds the local cluster's address itself and says at once when there is none
    host, port = _host_port(address)
    if not host or not port.isdigit():
        raise ClusterError(f"Ray address: expected auto, HOST:PORT or ray://HOST:PORT (got {address!r})")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(
            f"Ray address {address}: no Ray cluster answers ({exc.strerror or exc}); start it "
            "(e.g. cluster/local.sh up) or fix the address"
        ) from None


def private_temp_dir() -> Path:
    """`<tmp>/fundus-search-<uid>/ray`: the embedded Ray's sessions, logs and sockets, inside a
    folder of mode 0700. Ray's default, `/tmp/ray`, is shared by every user, and Ray makes the
    folder it is given world-writable (ray._common.utils.try_to_create_directory), so privacy
    comes from the parent, which only this user can enter.

    Raises:
        ClusterError: the parent exists and is not this user's own folder.
    """
    parent = Path(tempfile.gettempdir()) / f"fundus-search-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        parent.mkdir(mode=0o700)
    info = parent.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ClusterError(
            f"{parent}: not a folder of yours (it holds Ray's temporary files); remove it, or set "
            "TMPDIR to a folder only you can write"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        parent.chmod(0o700)
    return parent / "ray"


def token_path() -> Path:
    """Where Ray keeps its authentication token: RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def tighten_token_file() -> None:
    """Make the token file readable by its owner only (Ray writes it with the default umask)."""
    path = token_path()
    with contextlib.suppress(OSError):
        info = path.stat()
        if info.st_uid == os.getuid() and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            path.chmod(0o600)
            log.info("%s: made readable by its owner only", path)


@contextlib.contextmanager
def _private_files():
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)
