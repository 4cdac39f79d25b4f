"""The CI/CD side of deploy-helper: build, sign and send grant requests."""
