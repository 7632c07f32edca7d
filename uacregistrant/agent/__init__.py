"""The transaction user: runs each registrant's requests through the network layer."""
