"""Training and evaluation of the world model (torch, no ROS)."""
