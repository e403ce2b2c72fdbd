"""Run a robot config in Gazebo (gz sim) with ros2_control, and the ami_ros stack on it.

    ros2 launch ami_ros gazebo.launch.py robot:=arm_reach
    ros2 launch ami_ros gazebo.launch.py robot:=/path/to/robots/my_arm.yaml headless:=false

From the robot config (``config/robots/<name>.yaml`` or a path) ``ami_ros.gazebo`` writes, under
``out_dir``: the robot's URDF with a ``<ros2_control>`` block (gz_ros2_control, position command
interfaces within the URDF limits), the gz_ros2_control plugin and the config's camera; the
controllers YAML (joint_state_broadcaster, joint_trajectory_controller,
forward_position_controller); and a world (floor, sun, the physics, sensors and ros2_control
systems). Then it starts Gazebo (ros_gz_sim), robot_state_publisher, spawns the robot, activates
joint_state_broadcaster and ``controller``, bridges ``/clock``, ``/camera/image_raw`` and
``/camera/camera_info`` with ros_gz_bridge, and includes ``ami_bringup.launch.py`` with
``use_sim_time:=true``. The planner's ``output`` parameter must match ``controller``
(``joint_trajectory``, the default of config/ami_ros.yaml, or ``forward_position``).

Needs a ROS 2 install with ros_gz_sim, ros_gz_bridge, gz_ros2_control, robot_state_publisher and
the ros2_controllers. Gazebo renders its own pictures: record bags in Gazebo and train on them
(a model trained on the built-in simulator's frames does not transfer).
"""
import os
import tempfile

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from ami_ros.gazebo import CAMERA_TOPIC, CONTROLLERS, write_gazebo_files
from ami_ros.robot_config import load_robot


def gazebo_actions(context, share):
    """Write the Gazebo files for the robot and return the actions that run them."""
    robot = load_robot(LaunchConfiguration('robot').perform(context))
    out = LaunchConfiguration('out_dir').perform(context) or tempfile.mkdtemp(prefix='ami_gz_')
    files = write_gazebo_files(robot, out)
    headless = LaunchConfiguration('headless').perform(context) == 'true'
    gz_args = f'-r {"-s --headless-rendering " if headless else ""}{files.world}'
    try:
        gz_share = get_package_share_directory('ros_gz_sim')
    except LookupError:  # PackageNotFoundError
        raise RuntimeError('gazebo.launch.py needs Gazebo and its ROS 2 packages: apt install '
                           'ros-$ROS_DISTRO-ros-gz ros-$ROS_DISTRO-gz-ros2-control '
                           'ros-$ROS_DISTRO-ros2-controllers, then source the ROS install '
                           f'(generated files kept in {out})') from None
    gz = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(gz_share, 'launch', 'gz_sim.launch.py')),
        launch_arguments={'gz_args': gz_args, 'on_exit_shutdown': 'true'}.items())
    description = Node(
        package='robot_state_publisher', executable='robot_state_publisher', output='screen',
        parameters=[{'robot_description': files.urdf.read_text(), 'use_sim_time': True}])
    spawn = Node(
        package='ros_gz_sim', executable='create', output='screen',
        arguments=['-file', str(files.urdf), '-name', robot.name, '-allow_renaming', 'false'])
    camera_info = CAMERA_TOPIC.rsplit('/', 1)[0] + '/camera_info'
    bridge = Node(
        package='ros_gz_bridge', executable='parameter_bridge', output='screen',
        arguments=['/clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock',
                   f'/{CAMERA_TOPIC}@sensor_msgs/msg/Image[gz.msgs.Image',
                   f'/{camera_info}@sensor_msgs/msg/CameraInfo[gz.msgs.CameraInfo'])
    spawners = [Node(package='controller_manager', executable='spawner', output='screen',
                     arguments=[name, '--controller-manager-timeout', '120'])
                for name in ('joint_state_broadcaster', LaunchConfiguration('controller'))]
    stack = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, 'launch', 'ami_bringup.launch.py')),
        launch_arguments={'scene': 'arm_reach', 'robot': str(robot.source or robot.name),
                          'use_sim': 'false', 'use_sim_time': 'true'}.items())
    return [gz, description, spawn, bridge, *spawners, stack]


def generate_launch_description():
    share = get_package_share_directory('ami_ros')
    arguments = [
        DeclareLaunchArgument(
            'robot', default_value='arm_reach',
            description='Robot config (YAML: URDF, end effector, joints, camera; a path, or a '
                        'name in config/robots such as boom5) to run in Gazebo.'),
        DeclareLaunchArgument(
            'controller', default_value='joint_trajectory_controller', choices=list(CONTROLLERS),
            description='Position controller to activate; the planner\'s output parameter must '
                        'match it (joint_trajectory or forward_position).'),
        DeclareLaunchArgument(
            'headless', default_value='true', choices=['true', 'false'],
            description='Run the Gazebo server only (rendering for the camera, no window).'),
        DeclareLaunchArgument(
            'out_dir', default_value='',
            description='Folder for the generated URDF, controllers YAML and world; empty: a new '
                        'temporary folder.'),
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'ami_ros.yaml'),
            description='YAML with one parameter block per stack node, as for '
                        'ami_bringup.launch.py.'),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=gazebo_actions,
                                                         args=[share])])
