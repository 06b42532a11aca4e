"""The vidrip Serve application for `serve run` / `serve deploy` (and what `vidrip serve` deploys).

    serve run serve_apps/tiny.yaml             # from the repo root, on a running Ray (RAY_ADDRESS)
    vidrip serve --config serve_apps/tiny.yaml # starts a Ray head on 127.0.0.1 first, prints key and URL

``args`` in the YAML are a :class:`vidrip.serve.config.ServeConfig`; Serve validates them against it
before building, so an unknown or mistyped key fails the deploy naming the key.
Research use only, not for clinical decisions.
"""

from ray.serve import Application

from vidrip.serve.app import build_app as build_vidrip_app
from vidrip.serve.config import ServeConfig


def build_app(args: ServeConfig) -> Application:
    return build_vidrip_app(args)
