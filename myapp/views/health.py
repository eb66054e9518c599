from pyramid.security import NO_PERMISSION_REQUIRED
from pyramid.view import view_config
from sqlalchemy import text


@view_config(route_name="healthz", request_method="GET", renderer="json", permission=NO_PERMISSION_REQUIRED)
def healthz(request):
    return {"status": "ok"}


@view_config(route_name="readyz", request_method="GET", renderer="json", permission=NO_PERMISSION_REQUIRED)
def readyz(request):
    checks = {}
    try:
        with request.registry["db_engine"].connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as e:  # any failure means "not ready", whatever the driver raises
        checks["database"] = f"unavailable: {type(e).__name__}"
    ready = all(value == "ok" for value in checks.values())
    request.response.status_int = 200 if ready else 503
    return {"status": "ok" if ready else "unavailable", "checks": checks}
