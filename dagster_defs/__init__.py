"""The Dagster asset graph over StarryNight: partitioned assets, resources, sensors, checks."""
