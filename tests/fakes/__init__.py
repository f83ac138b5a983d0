"""Fakes of outside systems that run as real servers on loopback.

Each fake speaks the outside system's wire protocol, so the real client
library talks to it unchanged, and records what it was sent.
"""
