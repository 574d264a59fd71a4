"""``lamplighter hub``: a JupyterHub service that stops idle servers without killing running work.

``fleet.py`` holds the loop: list the hub's ready servers, run one deadline-driven
:class:`~lamplighter.agent.Agent` per server (probed at the server's own address, stopped through the
hub), re-list at most every ``cull_every``. The hub's REST API itself is
:mod:`lamplighter.platforms.jupyterhub`.
"""
