"""``lamplighter hub``: a JupyterHub service that stops idle servers without killing running work.

``fleet.py`` holds the loop: list the hub's ready servers, run one deadline-driven
:class:`~lamplighter.agent.Agent` per server (probed at the server's own address, stopped through the
hub), re-list at most every ``cull_every``. The hub's REST API itself is
:mod:`lamplighter.platforms.jupyterhub`.

With ``service_url``, ``service.py`` is the service's own endpoint: reports from the in-server
extension in (their form and use in ``reports.py``, the extension's side in ``reporter.py``), the
status page (``views.py``) and metrics out; ``hooks.py`` is how it plugs into the fleet's agents.
"""
