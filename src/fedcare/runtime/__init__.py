"""Round mechanics shared by the simulator and the deployed coordinator."""
