"""The daemon's HTTP listener: probes, Prometheus metrics, a read-only JSON API, Server-Sent
Events and the dashboard, served by gevent's WSGI server inside the daemon process.

    server.py      HttpListener: the component that binds, serves and bounds connections
    routes.py      the WSGI application: which path answers what
    auth.py        bearer token: who may see what (pure)
    readiness.py   /readyz: the checks and their verdict (pure)
    scaling.py     /api/scaling: townhall's autoscaling signal (pure)
    town_view.py   what is read from Redis on request, within a time budget
    collectors.py  the Prometheus collector of the town's gauges (read on scrape)
    sse.py         /api/events: the town stream as Server-Sent Events
    dashboard.html the page at `/` (self-contained: no CDN, no build step)
Nothing here writes to Redis: no endpoint changes the town.
"""
