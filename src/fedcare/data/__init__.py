"""Site datasets: the shipped real data, partitions, user tables and synthetic data."""
