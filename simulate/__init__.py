"""Synthetic and converted signals: the demo scenario, the benchmark corpus, and the loghub sshd converter."""
