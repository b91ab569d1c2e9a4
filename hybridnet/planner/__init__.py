"""The planner: (layer infos, a strategy, devices) -> Plan. Pure: reads shapes only."""
from hybridnet.planner.feasibility import Feasibility, check_plan
from hybridnet.planner.graph_info import LayerInfo, WeightInfo
from hybridnet.planner.plan import Estimates, LayerPlan, Plan, StagePlan
from hybridnet.planner.planner import build_plan, check_batch, make_plan

__all__ = ["Estimates", "Feasibility", "LayerInfo", "LayerPlan", "Plan", "StagePlan",
           "WeightInfo", "build_plan", "check_batch", "check_plan", "make_plan"]
