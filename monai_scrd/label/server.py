"""``python -m monai_scrd.label.server start_server ...``: MONAI Label's own ``monailabel start_server``, with browser
cross-origin access (CORS) off unless origins are given in ``$SCRD_LABEL_CORS_ORIGINS`` (a JSON list), and inference
run in the web server's thread pool so that one long request does not hold up the others.

MONAI Label 0.8.5 allows every origin when its ``MONAI_LABEL_CORS_ORIGINS`` setting is empty, and fails at start-up
when that setting is not empty (it cannot print URL objects when it logs its settings). So this sets the origins after
that start-up check and before the web app reads them: a list holding only an origin of the reserved ``.invalid``
domain, which no page can have, turns CORS off.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings

from monailabel.config import settings
from monailabel.main import Main

CORS_NONE = "https://cors-disabled.invalid"
# The origins are set as strings (see above), so pydantic warns once that they are not URL objects when MONAI Label
# dumps its settings at start: expected here, and silenced for exactly that value.
warnings.filterwarnings("ignore", message=r"(?s)Pydantic serializer warnings:.*'https://cors-disabled\.invalid'",
                        category=UserWarning)
DEFAULT_UVICORN_APP = "monailabel.app:app"


def _infer_in_thread_pool() -> None:
    """MONAI Label 0.8.5 declares its ``POST /infer/{model}`` endpoint ``async`` but scores synchronously inside it,
    which blocks the server's event loop: every other request waits until the running inference ends. Registering the
    same endpoint as a plain function makes FastAPI run it in its worker thread pool (PyTorch releases the GIL while it
    computes), so small requests keep being answered while a large one runs. The router is changed before
    ``monailabel.app`` includes it."""
    from monailabel.endpoints import infer

    router = infer.router
    for route in list(router.routes):
        if route.path == router.prefix + "/{model}" and "POST" in route.methods and inspect.iscoroutinefunction(route.endpoint):
            def run_inference(**kwargs):
                kwargs.pop("user", None)  # checked by the RBAC dependency; run_inference does not take it
                return infer.run_inference(**kwargs)

            run_inference.__signature__ = inspect.signature(route.endpoint)  # the same query, form and RBAC parameters
            router.routes.remove(route)
            router.add_api_route("/{model}", run_inference, methods=["POST"], summary=route.summary)  # under the prefix


def __getattr__(name: str):
    """``monai_scrd.label.server:app``, the web app uvicorn serves: MONAI Label's, built once the settings are final."""
    if name == "app":
        _infer_in_thread_pool()
        from monailabel.app import app

        return app
    raise AttributeError(name)


class _Main(Main):
    def start_server_validate_args(self, args):
        super().start_server_validate_args(args)
        origins = json.loads(os.environ.get("SCRD_LABEL_CORS_ORIGINS") or "[]")
        settings.MONAI_LABEL_CORS_ORIGINS = [str(o) for o in origins] or [CORS_NONE]
        if args.uvicorn_app == DEFAULT_UVICORN_APP:
            args.uvicorn_app = "monai_scrd.label.server:app"

    def start_server_init_settings(self, args):
        super().start_server_init_settings(args)
        # MONAI Label exports its settings to the environment of the processes it starts. Its train and infer task
        # processes serve nothing, and fail when they log a non-empty origins list (URL objects are not JSON): they get
        # none. Uvicorn's worker processes (--workers N) serve, and read the origins from there: they keep them (and
        # task processes then fail as above).
        if (args.workers or 1) <= 1:
            os.environ.pop("MONAI_LABEL_CORS_ORIGINS", None)


if __name__ == "__main__":
    _Main().run()
