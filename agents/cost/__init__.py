"""Step cost models: how long one engine step takes, given what it computed.

One interface (`CostModel.seconds(StepLoad)`), four kinds, each a profile file under
`checkpoints/profiles/` (see `agents.cost.profile`):

- `table`: the profiler's measured medians, interpolated (`TableCost`);
- `fitted`: a linear model fitted to the same measurements (`LinearCost`);
- `gpu`: a named GPU deployment priced from measured per-operator GPU timings (`GpuCost`);
- `roofline`: bytes over bandwidth and FLOPs over peak, for hardware without profiles
  (`RooflineCost`).

The model clock advances by these seconds, and the analytic controllers predict with them.
"""

from agents.cost.fitted import LinearCost
from agents.cost.gpu import GpuCost
from agents.cost.load import StepLoad
from agents.cost.model import MIN_STEP_S, CostModel
from agents.cost.profile import Profile, ProfileError, load_profile
from agents.cost.roofline import RooflineCost
from agents.cost.table import TableCost

__all__ = [
    "MIN_STEP_S",
    "CostModel",
    "GpuCost",
    "LinearCost",
    "Profile",
    "ProfileError",
    "RooflineCost",
    "StepLoad",
    "TableCost",
    "load_profile",
]
