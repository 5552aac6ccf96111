"""Turning a miss into an image: solve and install conda environments without conda, render a
Dockerfile, build it on the Docker engine, push it, and resolve keys with one build per key."""
