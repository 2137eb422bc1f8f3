"""Studies: baselines and federated strategies over seeds, evaluated on every site."""
