"""Release trust: Ed25519 signing of bundles and the canary a device checks before it switches."""
