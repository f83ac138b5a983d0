"""The other queues, each draining no-op jobs in a process of its own.

Each module here installs its queue's own schema with the queue's own API,
enqueues jobs in one batch, runs one worker process until the queue is empty
(``python -m bench.rivals.<module> URL CONCURRENCY``) and reads the time from
the first job started to the last one finished from the queue's own tables,
in the database's clock, the same window artifactd is measured over.
"""
