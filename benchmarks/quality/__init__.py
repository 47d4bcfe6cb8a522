"""The quality benchmark (`make quality`): the default `ensemble-train ensemble`, trained through the CLI and
scored through the real server, against scikit-learn baselines fitted as a careful user would, on tables
that packages ship offline. Results go to docs/quality.md."""
