"""SIP on the network: transports, the client transaction layer, the resolver."""
