"""Closed-loop evaluations in the core simulator (no ROS import): planning and surprise."""
