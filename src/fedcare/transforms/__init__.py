"""Update transforms: stages that encode an update at the site and decode it at the coordinator."""
