"""The API's routers, one per resource: ``/creative``, ``/events``, ``/health``, ``/preview``,
``/reports/ab``, ``/metrics``.

Each reads what it needs from ``app.state.serving`` (:func:`..state.serving_state`) and raises the
errors of :mod:`..http`, whose handlers answer them; :func:`..api.create_app` assembles them.
"""
from . import creative, events, health, metrics, preview, reports

ROUTERS = (creative.router, events.router, health.router, preview.router, reports.router, metrics.router)
