"""The FastAPI service: ``create_app(settings)`` assembles routers, auth and error handling."""
