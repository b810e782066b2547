"""The `detrigger-guard` command group: options in, a job or the service called, no logic."""
