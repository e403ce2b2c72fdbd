"""ami_ros: a learned world model for ROS 2 robots.

The core (everything outside ``ami_ros.nodes``) imports no ROS package; the nodes are thin
translators between ROS messages/parameters and core calls.
"""

__version__ = '0.1.0'
