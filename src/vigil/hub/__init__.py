"""The hub: Kafka topics, clients and the local broker Vigil can run for itself."""
