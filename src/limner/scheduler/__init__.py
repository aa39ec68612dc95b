"""The scheduler: admission and back-pressure, lanes with fairness and batching, tickets, residency."""

from limner.scheduler.admission import DISCONNECT_POLL_SECONDS, KeyLimits, ModelLimits, Scheduler
from limner.scheduler.lanes import Lane, LaneHost
from limner.scheduler.residency import Residency
from limner.scheduler.tickets import Observer, Ticket, Unobserved, operation_of

__all__ = [
    "DISCONNECT_POLL_SECONDS",
    "KeyLimits",
    "Lane",
    "LaneHost",
    "ModelLimits",
    "Observer",
    "Residency",
    "Scheduler",
    "Ticket",
    "Unobserved",
    "operation_of",
]
