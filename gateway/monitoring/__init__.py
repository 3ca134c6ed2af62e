"""Model monitoring (README "Monitoring"): live profiles, drift against a reference, online
metrics from feedback. `monitor.Monitor` is the entry point; `view` draws reports for the CLI."""
