"""Reference ILA-SOC receiver: the server side of the agent wire protocol, standard library only.

Used by tests, benchmarks and the demo. Everything is stored in SQLite (in memory by default).

Agent endpoints (POST, JSON object body, header ``X-API-Key`` unless the key is ``None``):

- ``/api/agent/register``      store or update the agent → 200 ``{"status": "success"}``
- ``/api/agent/heartbeat``     store the heartbeat; 404 when the agent is not registered
- ``/api/agent/ingest-batch``  store the entries, de-duplicated by ``event_uid``; 404 when the
  agent is not registered → 200 ``{"status", "total", "inserted", "duplicates"}``

Missing or wrong key → 401; unusable body or missing ``agent_id``/``logs`` → 400. Every request to
a non-admin path is recorded, in arrival order, in a request log.

Admin endpoints (no key; meant for loopback — do not expose them):

- GET ``/api/receiver/stats``                  counters
- GET ``/api/receiver/events?after=&limit=``   stored events, by id
- GET ``/api/receiver/requests?after=&limit=`` the request log
- GET ``/api/receiver/heartbeats?after=``, ``/batches?after=``, ``/agents``, ``/config``
- POST ``/api/receiver/script``  ``{"endpoint", "responses": [{"status", "headers", "delay",
  "body", "drop"}]}``: the next requests to that endpoint get these answers, nothing is stored
- POST ``/api/receiver/config``  any of ``reject_substring``, ``max_batch``, ``delay``,
  ``accept_gzip``, ``forget_agents``, ``reset``

Run it: ``ila-agent receiver --port 8787 --api-key KEY --db receiver.db``.

One file per role: ``state`` (the logic and its SQLite store), ``faults`` (scripted answers and
settings), ``server`` (HTTP).
"""

from __future__ import annotations

from ila_agent.receiver.faults import ReceiverConfig, ScriptedResponse
from ila_agent.receiver.server import ReceiverHandler, ReceiverServer, make_server, serve
from ila_agent.receiver.state import ENDPOINTS, Receiver

__all__ = [
    "ENDPOINTS",
    "Receiver",
    "ReceiverConfig",
    "ReceiverHandler",
    "ReceiverServer",
    "ScriptedResponse",
    "make_server",
    "serve",
]
