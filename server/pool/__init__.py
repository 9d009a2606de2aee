"""Inference workers and the pool that spawns, supervises and dispatches to them.

The gateway side (``pool``, ``balancer``, ``process``) never imports LiteRT;
the worker side (``worker``, ``cache``, ``runtime``) loads it lazily. The two
talk only through ``protos/worker.proto``, converted in ``messages``.
"""
