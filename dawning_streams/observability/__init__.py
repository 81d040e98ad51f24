"""Metrics, traces, their exporters, and the health checks behind ``/ready``."""
