"""The plasticrl lab: the application the ``plasticrl`` command runs (CLI, configs, training and continual runners,
data collection, benchmarks, plots). Nothing outside ``plasticrl.lab`` imports it."""
