"""Deployment across hospitals: certificates, the run store and the gRPC transport."""
