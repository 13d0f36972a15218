"""The foundations every layer stands on: configuration, errors, the run folder, library patches."""
