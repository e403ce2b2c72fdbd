"""Bring up the ami_ros stack: perception, world_model and planner, one process each.

    ros2 launch ami_ros ami_bringup.launch.py scene:=arm_reach use_sim:=true
    ros2 launch ami_ros ami_bringup.launch.py params_file:=/path/to/my_robot.yaml namespace:=arm1
    ros2 launch ami_ros ami_bringup.launch.py robot:=/path/to/robots/my_arm.yaml use_sim:=true

Each node reads ``params_file`` (one block per node, default ``config/ami_ros.yaml``), then the
scene's overrides ``config/<scene>.yaml``, then the launch arguments. ``robot`` (a robot config,
``config/robots/<name>.yaml`` or a path) gives the world_model and planner nodes the arm's URDF
(joint names, safety limits, kinematics) and end-effector link, and the simulator the arm; its
name is the default model (share/ami_ros/models/<name>; or ``model`` in ``params_file``). The
argument wins over a ``robot`` in ``params_file``. With ``use_sim:=true`` the
built-in simulator (``sim.launch.py``) starts too, configured by its own ``sim_params_file``
(default ``config/sim.yaml``; ``params_file`` never reaches it), and every node runs on its
``/clock``; without it the nodes talk to whatever publishes ``camera/image_raw`` and
``joint_states`` (Gazebo, hardware drivers) in the same namespace. ``ami-ros bringup`` runs the
same nodes with the same files in one process, for machines without ``ros2 launch``.

Only substitutions that ROS 2 Jazzy's launch accepts as well as Kilted's are used (no nested
lists inside ``PathJoinSubstitution``).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterFile, ParameterValue

NODES = ('perception', 'world_model', 'planner')
"""The stack's executables (console scripts of setup.py), one node of the same name each."""


def scene_params_file(share):
    """``<share>/config/<scene>.yaml`` as one parameter file.

    A list of text and substitutions is concatenated when performed, in every launch version;
    ``PathJoinSubstitution([share, 'config', [scene, '.yaml']])`` only works from Kilted on
    (Jazzy: ``TypeError: Failed to normalize given item of type '<class 'list'>'``).
    """
    return ParameterFile([os.path.join(share, 'config', ''), LaunchConfiguration('scene'),
                          '.yaml'])


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
            scene_params_file(share),
            {
                'scene': LaunchConfiguration('scene'),
                'robot': ParameterValue(LaunchConfiguration('robot'), value_type=str),
                'backend': LaunchConfiguration('backend'),
                'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                               value_type=bool),
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
            'robot', default_value='',
            description='Robot config of an arm (YAML: URDF, end effector, joints, camera; a '
                        'path, or a name in config/robots such as boom5): the nodes take its '
                        'URDF and end effector, the simulator its arm. Empty: the scene\'s own.'),
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
            'use_sim_time', default_value=LaunchConfiguration('use_sim'),
            choices=['true', 'false'],
            description='Run the stack on /clock time; default: as use_sim. gazebo.launch.py '
                        'sets it for Gazebo\'s clock.'),
        DeclareLaunchArgument(
            'sim_params_file', default_value=os.path.join(share, 'config', 'sim.yaml'),
            description='YAML with the parameters of the simulator node (rates, seed, frame '
                        'ids); used with use_sim:=true only, params_file never reaches it.'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of every node and of its relative topics (one per robot).'),
    ]
    sim = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'sim.launch.py')),
        condition=IfCondition(LaunchConfiguration('use_sim')),
        launch_arguments={
            'scene': LaunchConfiguration('scene'),
            'robot': LaunchConfiguration('robot'),
            'namespace': LaunchConfiguration('namespace'),
            'use_sim_time': LaunchConfiguration('use_sim'),
            # the simulator's own file: the stack's params_file must not configure it
            'sim_params_file': LaunchConfiguration('sim_params_file'),
        }.items(),
    )
    return LaunchDescription(arguments + [sim] + [ami_node(name, share) for name in NODES])
