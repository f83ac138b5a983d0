"""The thin HTTP API: it writes rows and reads them, and never calls an LLM.

``create_app(settings)`` in ``api_stub.app`` builds it; ``artifactd api``
serves it (``api_stub.server``). Workers, in ``worker/``, do the generating;
nothing here imports them.
"""
