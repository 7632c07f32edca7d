"""The daemon as a whole: settings, the twistd plugin options, the service, start-up checks."""
