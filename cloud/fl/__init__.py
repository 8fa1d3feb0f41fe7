"""Real federated rounds on Flower: the ServerApp, the local launcher, SecAgg+ and throwaway TLS."""
