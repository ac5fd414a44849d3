"""The engine: everything that runs a job and knows nothing of sockets.

Spawning (sandbox, cgroup, launcher), the pumps, the runner and the rules
that turn what happened into a result. The daemon imports from here, never
the other way round.
"""
