"""`ray start` for a cluster whose nodes all live on this machine, every server on 127.0.0.1.

Ray 2.60 rewrites a node or GCS address of 127.0.0.1 to the machine's network address
(`ray._private.services.resolve_ip_for_localhost`), and its servers then listen on every
interface. Its one switch against that, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, keeps nodes on
127.0.0.1 but makes `ray start` refuse worker nodes. cluster/local.sh therefore sets the switch
for every process of the cluster (workers, agents, job drivers) and starts each node through
this wrapper, which keeps the given address and lets worker nodes start. Use it only for
nodes on one machine; Ray pins the version range these two names exist in (pyproject.toml).
"""

import sys

import ray._private.ray_constants as ray_constants
import ray._private.services as services
from ray.scripts.scripts import main

services.resolve_ip_for_localhost = lambda host: host  # keep 127.0.0.1 as given
ray_constants.ENABLE_RAY_CLUSTER = True  # allow worker nodes, which stay on 127.0.0.1 as well

if __name__ == "__main__":
    sys.exit(main())
