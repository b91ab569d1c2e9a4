"""The planner: (layers with weight specs, a strategy, devices) -> Plan."""
from hybridnet.planner.plan import Plan, make_plan

__all__ = ["Plan", "make_plan"]
