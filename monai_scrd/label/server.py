"""``python -m monai_scrd.label.server start_server ...``: MONAI Label's own ``monailabel start_server``, with browser
cross-origin access (CORS) off unless origins are given in ``$SCRD_LABEL_CORS_ORIGINS`` (a JSON list).

MONAI Label 0.8.5 allows every origin when its ``MONAI_LABEL_CORS_ORIGINS`` setting is empty, and fails at start-up
when that setting is not empty (it cannot print URL objects when it logs its settings). So this sets the origins after
that start-up check and before the web app reads them: a list holding only an origin of the reserved ``.invalid``
domain, which no page can have, turns CORS off.
"""

from __future__ import annotations

import json
import os

from monailabel.config import settings
from monailabel.main import Main

CORS_NONE = "https://cors-disabled.invalid"


class _Main(Main):
    def start_server_validate_args(self, args):
        super().start_server_validate_args(args)
        origins = json.loads(os.environ.get("SCRD_LABEL_CORS_ORIGINS") or "[]")
        settings.MONAI_LABEL_CORS_ORIGINS = [str(o) for o in origins] or [CORS_NONE]

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
