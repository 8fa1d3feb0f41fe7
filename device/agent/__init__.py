"""The fleet agent: polls the service, verifies signed updates, health-checks and rolls back, collects and uploads samples."""
