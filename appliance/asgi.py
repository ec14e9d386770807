"""The ASGI entry point uvicorn imports (also in each worker process)."""

from appliance.app import create_app
from appliance.logs import configure_logging
from appliance.settings import Settings

configure_logging()
app = create_app(Settings.from_env())
