"""The online serving scenario: a library's own OpenAI-compatible server on loopback, a load generator
that keeps a precomputed schedule, per-rate metrics, the rate sweep and its figures.

Modules: ``schedule`` (arrival times), ``servers`` (one launcher entry per library), ``launch``
(process groups, health, cleanup), ``client`` (the streaming load generator), ``metrics`` (per-rate
summary), ``sweep`` (a rate sweep writing the CSV and record), ``figures``, ``loopback_server`` (a
minimal streaming server used by the fault tests and the capacity benchmark), ``cli``.
"""
