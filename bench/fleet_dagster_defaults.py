"""Benchmark only: the project's code location with Dagster's default executor (a process per step),
the `dagster_defaults` fleet variant's baseline."""

import common  # noqa: F401  (puts the repo on sys.path)

from dagster_shared.record import copy

from civicband_pipelines import definitions

defs = copy(definitions.defs, executor=None)  # the only Definitions at module scope, as Dagster requires
