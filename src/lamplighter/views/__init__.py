"""What lamplighter shows: Prometheus metrics, the status page, the journal report and the policy replay.

Nothing here decides or acts: these modules read decisions, the journal and traces. ``metrics``
needs ``prometheus-client``; the rest needs only the standard library.
"""
