"""Requests pyroute2 encoded on this host, kept for later commands in a file below the state
directory's cache/ (this host's own: never replicated, so a cluster's shared records hold
policy only, never request bytes). circuit-qos keeps its plans there, circuit-lb its IPVS
requests, under one invalidation scheme: what is kept is tagged with pyroute2's version and
the size and modification time of each module that lays the requests out (its user's, and
circuit_netlink's), as Python checks a .pyc against its source; another tag, or no file, and
the caller encodes them again."""

import os

from . import pyroute2_version

HERE = os.path.dirname(os.path.abspath(__file__))


class Kept:
    """One cache file of encoded requests: cache/<name> below the store's root. layout: the
    caller's modules that decide the requests' bytes."""

    def __init__(self, store, name: str, layout: tuple[str, ...]):
        self.store = store
        self.path = store.path("cache", name)
        self.layout = layout

    def tag(self) -> dict:
        """What requests encoded now are tagged with (stamps None when the code cannot be
        read: nothing kept matches)."""
        try:
            modules = sorted(os.path.join(HERE, name) for name in os.listdir(HERE)
                             if name.endswith(".py"))
            stamps = [[st.st_size, st.st_mtime_ns]
                      for st in map(os.stat, (*self.layout, *modules))]
        except OSError:
            stamps = None
        return {"pyroute2": pyroute2_version(), "layout": stamps}

    def load(self) -> dict | None:
        """What was kept, if this code made it; None when nothing was, or it cannot be used."""
        record = self.store.read_cache(self.path)
        if record is None:
            return None
        tag = self.tag()
        if tag["layout"] is None or record.get("tag") != tag:
            return None
        return record

    def keep(self, body: dict) -> None:
        """Keep body (a JSON object), tagged; a cache: nothing fails when it cannot be."""
        self.store.write_cache(self.path, {**body, "tag": self.tag()})

    def drop(self) -> None:
        """Remove what is kept (nothing kept counts as removed)."""
        self.store.remove(self.path)
