"""Bring up the ami_ros stack: perception, world_model and planner, one process each.

    ros2 launch ami_ros ami_bringup.launch.py scene:=arm_reach use_sim:=true
    ros2 launch ami_ros ami_bringup.launch.py params_file:=/path/to/my_robot.yaml namespace:=arm1

Each node reads ``params_file`` (one block per node, default ``config/ami_ros.yaml``), then the
scene's overrides ``config/<scene>.yaml``, then the launch arguments. With ``use_sim:=true`` the
built-in simulator (``sim.launch.py``) starts too and every node runs on its ``/clock``; without
it the nodes talk to whatever publishes ``camera/image_raw`` and ``joint_states`` (Gazebo,
hardware drivers) in the same namespace. ``ami-ros bringup`` runs the same nodes with the same
files in one process, for machines without ``ros2 launch``.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

NODES = ('perception', 'world_model', 'planner')
"""The stack's executables (console scripts of setup.py), one node of the same name each."""


def ami_node(executable, share):
    """One ami_ros node: shared parameters, the scene's overrides, then the launch arguments."""
    return Node(
        package='ami_ros',
        executable=executable,
        name=executable,
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        emulate_tty=True,
        parameters=[
            LaunchConfiguration('params_file'),
            PathJoinSubstitution([share, 'config', [LaunchConfiguration('scene'), '.yaml']]),
            {
                'scene': LaunchConfiguration('scene'),
                'backend': LaunchConfiguration('backend'),
                'use_sim_time': ParameterValue(LaunchConfiguration('use_sim'), value_type=bool),
            },
        ],
    )


def generate_launch_description():
    share = get_package_share_directory('ami_ros')
    arguments = [
        DeclareLaunchArgument(
            'scene', default_value='arm_reach', choices=['arm_reach', 'pusht'],
            description='Robot/scene: picks the shipped model, the URDF (joint limits, '
                        'workspace) and config/<scene>.yaml overrides.'),
        DeclareLaunchArgument(
            'backend', default_value='torch', choices=['torch', 'onnxruntime', 'tensorrt'],
            description='Inference backend of the world model: torch (CPU or CUDA), '
                        'onnxruntime, or tensorrt (NVIDIA GPUs, Jetson).'),
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'ami_ros.yaml'),
            description='YAML with one parameter block per node (perception, world_model, '
                        'planner); the scene file and these arguments override it.'),
        DeclareLaunchArgument(
            'use_sim', default_value='false', choices=['true', 'false'],
            description='Also start the built-in simulator (sim.launch.py) and run every node '
                        'on its /clock (use_sim_time).'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of every node and of its relative topics (one per robot).'),
    ]
    sim = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'sim.launch.py')),
        condition=IfCondition(LaunchConfiguration('use_sim')),
        launch_arguments={
            'scene': LaunchConfiguration('scene'),
            'namespace': LaunchConfiguration('namespace'),
            'use_sim_time': LaunchConfiguration('use_sim'),
        }.items(),
    )
    return LaunchDescription(arguments + [sim] + [ami_node(name, share) for name in NODES])
