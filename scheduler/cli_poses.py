"""`farm poses IN.mp4 OUT_DIR --annotator-dir DIR`: OpenPose skeletons for a ControlNet job.
`register(main)` adds the command to the `farm` group.

It needs controlnet_aux (not a farm dependency: `pip install controlnet_aux`) and the
annotator weights body_pose_model.pth, hand_pose_model.pth and facenet.pth from the hub
repo lllyasviel/Annotators in DIR; it downloads nothing. Exit codes: 0 done; 1 something
is missing or the video cannot be read, with what and where on stderr.
"""

from __future__ import annotations

import sys

import click

from farm.errors import FarmError
from scheduler.cli_jobs import EnvOption

EXIT_FAILED = 1


def register(main: click.Group) -> None:
    @main.command("poses")
    @click.argument("video", type=click.Path(exists=True, dir_okay=False))
    @click.argument("out_dir", type=click.Path(file_okay=False))
    @click.option("--annotator-dir", required=True, type=click.Path(file_okay=False), envvar="FARM_ANNOTATOR_DIR",
                  cls=EnvOption, help="Folder holding body_pose_model.pth, hand_pose_model.pth and facenet.pth "
                                      "(from lllyasviel/Annotators).")
    def poses(video: str, out_dir: str, annotator_dir: str) -> None:
        """Write the OpenPose skeleton of every frame of VIDEO to OUT_DIR (00000.png, …),
        ready for `control.video` of an animatediff-controlnet job."""
        from farm.poses import extract_poses

        try:
            count = extract_poses(video, out_dir, annotator_dir)
        except FarmError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(EXIT_FAILED)
        click.echo(f"wrote {count} pose frames to {out_dir}")
