"""The registration core: accounts, the registrant state machine, the registry. Pure: no Twisted, no I/O."""
