"""Azure Functions entry point: the blobwriter ASGI app behind one HTTP trigger.

The Functions host indexes this module (Python v2 programming model). Settings come from app
settings (BLOBWRITER_* environment variables). The host checks function keys (auth level
FUNCTION), so the app does not check BLOBWRITER_API_KEY here. Routes are /api/logs,
/api/health and /api/metrics: host.json keeps the "api" route prefix, and the ASGI app sees
the full path, the same URLs `blobwriter serve` answers.

The LogWriter starts on the first request (the host runs ASGI lifespan startup lazily) and
flushes on SIGTERM. The Python worker has no supported shutdown hook, so entries accepted with
202 but still queued when an instance is killed without SIGTERM are lost; clients that need a
guarantee post with ?wait=true and get 200 only once their entries are appended.
"""

import azure.functions as func

from blobwriter.api import create_app
from blobwriter.config import load_settings

app = func.AsgiFunctionApp(
    app=create_app(load_settings(), check_api_key=False, handle_sigterm=True),
    http_auth_level=func.AuthLevel.FUNCTION,
)


# --- Scheduled export (blobwriter.query.schedule; docs/DEPLOY.md, "Scheduled export") -----------------
# Registered only when BLOBWRITER_EXPORT_DESTINATION is set: every hour, each closed day not yet
# exported goes to that destination as Parquet. It needs pyarrow (the `query` extra) in the deployment;
# without it the function logs what to install and fails.
_export_settings = load_settings()
if _export_settings.export_destination:
    from blobwriter.query.schedule import SCHEDULE, run_scheduled_export

    @app.timer_trigger(schedule=SCHEDULE, arg_name="timer", run_on_startup=False)
    async def scheduled_export(timer: func.TimerRequest) -> None:
        await run_scheduled_export(_export_settings)
