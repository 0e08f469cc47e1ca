"""Azure Functions entry point: the blobwriter ASGI app behind one HTTP trigger.

The Functions host indexes this module (Python v2 programming model). Settings come from app
settings (BLOBWRITER_* environment variables). The host checks function keys (auth level
FUNCTION), so the app does not check BLOBWRITER_API_KEY here. Routes are /api/logs,
/api/health and /api/metrics: host.json keeps the "api" route prefix, and the ASGI app sees
the full path, the same URLs `blobwriter serve` answers.

A bad or missing setting (or a Key Vault reference that did not resolve) must not make the app
vanish: an exception here would leave the worker with no function and the host answering 404
everywhere. Instead the app is indexed as always and every route answers 503 naming the setting
and the reason, which is also logged once at ERROR.

The LogWriter starts on the first request (the host runs ASGI lifespan startup lazily) and
flushes on SIGTERM. The Python worker has no supported shutdown hook, so entries answered 202
(queued) and still queued when an instance is stopped are lost: the deployment sets
BLOBWRITER_ACK=written, so callers get 200 only once their entries are appended (docs/DEPLOY.md).
"""

import logging

import azure.functions as func

from blobwriter.api import create_app, unavailable_app
from blobwriter.config import Settings, load_settings
from blobwriter.errors import ConfigError

# The Azure SDK logs every storage request at INFO; under Functions that would all go to App Insights.
logging.getLogger("azure").setLevel(logging.WARNING)


def _asgi_app() -> object:
    try:
        return create_app(load_settings(), check_api_key=False, handle_sigterm=True)
    except ConfigError as exc:
        logging.getLogger("blobwriter").error("blobwriter is not configured; every route answers 503: %s", exc)
        return unavailable_app(exc)


app = func.AsgiFunctionApp(app=_asgi_app(), http_auth_level=func.AuthLevel.FUNCTION)


# --- Scheduled export (blobwriter.query.schedule; docs/DEPLOY.md, "Scheduled export") -----------------
# Registered only when BLOBWRITER_EXPORT_DESTINATION is set: every hour, each closed day not yet
# exported goes to that destination as Parquet. It needs pyarrow (the `query` extra) in the deployment;
# without it the function logs what to install and fails.
def _export_settings() -> Settings | None:
    try:
        settings = load_settings()
    except ConfigError:
        return None  # already reported: every route answers 503
    if not settings.export_destination:
        return None
    from blobwriter.query.destination import open_destination

    try:
        open_destination(settings.export_destination, settings)  # parsed only: no request, no optional package
    except ConfigError as exc:  # said now, not first at the next :15; each run fails (and logs) until fixed
        logging.getLogger("blobwriter.export").error(
            "BLOBWRITER_EXPORT_DESTINATION is not a destination; every scheduled export will fail: %s", exc)
    return settings


_export = _export_settings()
if _export is not None:
    from blobwriter.query.schedule import SCHEDULE, run_scheduled_export

    @app.timer_trigger(schedule=SCHEDULE, arg_name="timer", run_on_startup=False)
    async def scheduled_export(timer: func.TimerRequest) -> None:
        assert _export is not None
        await run_scheduled_export(_export)
