"""Carrying out allowed grants: the broker, sessions in target accounts, leases, owners, telemetry."""
