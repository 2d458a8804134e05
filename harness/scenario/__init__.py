"""Scenarios: what to run, under which backends, how often (a TOML file; its format is in
harness.scenario.parser's docstring).

- `model`: the frozen dataclasses a scenario is (workload, services, limits, sampling,
  variants);
- `parser`: a scenario file's tables read into them, strictly (every problem names the
  file and the dotted key);
- `lookup`: where a scenario comes from (a name, a path, a result's header).
"""

from harness.scenario.lookup import (
    available,
    from_header,
    load,
    resolve,
    scenario_dirs,
)
from harness.scenario.model import (
    CONDITIONS,
    PLACEMENTS,
    SCENARIO_NETWORKS,
    VARIANT_KEYS,
    Config,
    Healthcheck,
    Port,
    Sampling,
    Scenario,
    Service,
    Variant,
    Workload,
    dependency_order,
)
from harness.scenario.parser import (
    IMAGE_KEYS,
    SERVICE_KEYS,
    TOP_KEYS,
    WORKLOAD_KEYS,
    parse,
    with_services,
)

__all__ = [
    "CONDITIONS",
    "IMAGE_KEYS",
    "PLACEMENTS",
    "SCENARIO_NETWORKS",
    "SERVICE_KEYS",
    "TOP_KEYS",
    "VARIANT_KEYS",
    "WORKLOAD_KEYS",
    "Config",
    "Healthcheck",
    "Port",
    "Sampling",
    "Scenario",
    "Service",
    "Variant",
    "Workload",
    "available",
    "dependency_order",
    "from_header",
    "load",
    "parse",
    "resolve",
    "scenario_dirs",
    "with_services",
]
