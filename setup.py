"""ament_python package for ami_ros: installs the Python package, share/ files and executables."""
import os
from glob import glob

from setuptools import find_packages, setup

package_name = 'ami_ros'


def tree(folder):
    """(install dir, [files]) pairs for every file under `folder`, keeping its sub-folders."""
    out = []
    for dirpath, _, filenames in os.walk(folder):
        files = [os.path.join(dirpath, f) for f in sorted(filenames)]
        if files:
            out.append((os.path.join('share', package_name, dirpath), files))
    return out


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.py')),
        *tree('config'),
        *tree('urdf'),
        *tree('models'),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='ami_ros maintainers',
    maintainer_email='maintainers@ami-ros.dev',
    description='A learned world model for ROS 2 robots: latent perception, estimation and MPC.',
    license='Apache-2.0',
    extras_require={'test': ['pytest>=8,<9']},  # where colcon test looks for pytest
    entry_points={
        'console_scripts': [
            'ami-ros = ami_ros.cli:main',
            'sim = ami_ros.nodes.sim:main',
            'perception = ami_ros.nodes.perception:main',
            'world_model = ami_ros.nodes.world_model:main',
            'planner = ami_ros.nodes.planner:main',
        ],
    },
)
