"""The async node: the trio shell that runs a store's boards over the network."""
