"""The HTTP function target: events in, outcomes out (SPEC section 4)."""

from connectors.function.classify import classify_exception, classify_response
from connectors.function.target import HttpTarget

__all__ = ["HttpTarget", "classify_exception", "classify_response"]
