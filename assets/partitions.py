"""The one partitions definition: dataset versions. Its name is stored state; never rename it."""

import dagster as dg

dataset_versions = dg.DynamicPartitionsDefinition(name="dataset_versions")
