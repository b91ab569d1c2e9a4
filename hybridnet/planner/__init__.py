"""The planner: (layer infos, a strategy, devices) -> Plan. Pure: reads shapes only."""
from hybridnet.planner.graph_info import LayerInfo, WeightInfo
from hybridnet.planner.plan import Estimates, LayerPlan, Plan, StagePlan
from hybridnet.planner.planner import build_plan, check_batch, make_plan

__all__ = ["Estimates", "LayerInfo", "LayerPlan", "Plan", "StagePlan", "WeightInfo",
           "build_plan", "check_batch", "make_plan"]
