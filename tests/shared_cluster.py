"""A cluster shared with another team: their Serve application, and a watcher that keeps asking it.

serve.run(other_app(), name="other", route_prefix="/other")
watcher = Watcher(f"http://127.0.0.1:{port}/other")
...                                   # vidrip deploys, evaluates, deletes its own apps
assert watcher.stop().failures == []  # the other app answered every time
"""

from __future__ import annotations

import threading

import httpx


def stop_serve(ray_head) -> None:
    """Serve stopped on the session's test head, every application with it: the tests own that cluster, and a
    test that started Serve leaves none running (a running Serve is reused with its own HTTP port)."""
    import ray
    from ray import serve

    from vidrip.runtime import connect

    connect(ray_head.config, ray_head.workdir)
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def other_app():
    """Another team's application: it answers "other", on no CPU of its own."""
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Other:
        def __call__(self, request) -> str:
            return "other"

    return Other.bind()


class Watcher:
    """Asks an HTTP endpoint every half second in a thread; every answer that was not a 200 is kept."""

    def __init__(self, url: str):
        self.url, self.asked, self.failures = url, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.asked += 1
            try:
                status = httpx.get(self.url, timeout=10).status_code
            except httpx.HTTPError as exc:
                status = repr(exc)
            if status != 200:
                self.failures.append(status)

    def stop(self) -> Watcher:
        self._stop.set()
        self._thread.join()
        return self
