"""The ASGI entry point uvicorn imports (also in each worker process)."""

from appliance.app import create_app
from appliance.settings import Settings

app = create_app(Settings.from_env())
