"""The admin console: a line protocol, its commands and the ctl client."""
