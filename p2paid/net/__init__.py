"""The trio shell for the network: TCP, accepting and dialling, the connection driver,
admission, and local-network discovery (mDNS)."""
