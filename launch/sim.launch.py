"""Start the built-in simulator node ``sim`` of ami_ros.

    ros2 launch ami_ros sim.launch.py scene:=pusht image_size:=96 namespace:=robot1
    ros2 launch ami_ros sim.launch.py robot:=/path/to/robots/my_arm.yaml

It speaks the topics Gazebo + gz_ros2_control + ros_gz_bridge would (camera, joint_states,
joint_trajectory_controller and forward_position_controller inputs, /clock), so the rest of the
stack runs unchanged against it, Gazebo or hardware. The launch arguments override the
``sim_params_file`` values (default ``config/sim.yaml``). The argument is not called
``params_file`` on purpose: ``ami_bringup.launch.py`` includes this file, an included launch file
sees the launch configurations of the one that includes it, and the stack's ``params_file`` must
not configure the simulator.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory('ami_ros')
    arguments = [
        DeclareLaunchArgument(
            'scene', default_value='arm_reach', choices=['arm_reach', 'pusht'],
            description='Built-in scene: arm_reach (MuJoCo 4-joint arm) or pusht (Push-T gantry).'),
        DeclareLaunchArgument(
            'robot', default_value='',
            description='Robot config of the arm scene (YAML: URDF, end effector, camera; a '
                        'path, or a name in config/robots such as boom5); empty: the scene\'s '
                        'own arm.'),
        DeclareLaunchArgument(
            'sim_params_file', default_value=os.path.join(share, 'config', 'sim.yaml'),
            description='YAML with the sim node parameters (rates, seed, frame ids); the '
                        'arguments below override it.'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace for the node and its relative topics (one per robot).'),
        DeclareLaunchArgument(
            'use_sim_time', default_value='false', choices=['true', 'false'],
            description='Run the node on /clock time; the sim publishes /clock itself and paces '
                        'its steps by the steady clock either way.'),
        DeclareLaunchArgument(
            'image_size', default_value='64',
            description='Side of the square camera frame in pixels (16-1024).'),
    ]
    sim = Node(
        package='ami_ros',
        executable='sim',
        name='sim',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        emulate_tty=True,
        parameters=[
            LaunchConfiguration('sim_params_file'),
            {
                'scene': LaunchConfiguration('scene'),
                'robot': ParameterValue(LaunchConfiguration('robot'), value_type=str),
                'image_size': ParameterValue(LaunchConfiguration('image_size'), value_type=int),
                'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                               value_type=bool),
            },
        ],
    )
    return LaunchDescription(arguments + [sim])
