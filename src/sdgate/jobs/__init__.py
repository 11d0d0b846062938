"""Durable jobs, their events, and where images live.

Import from here: ``SqlJobStore``, ``JobEvents``, ``ImageStore``, ``LocalImageStore``.
"""

from sdgate.jobs.events import JobEvents, Subscription
from sdgate.jobs.images import ImageStore, LocalImageStore
from sdgate.jobs.store import SqlJobStore

__all__ = ["ImageStore", "JobEvents", "LocalImageStore", "SqlJobStore", "Subscription"]
