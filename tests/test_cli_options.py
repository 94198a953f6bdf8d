"""The `farm` command line's options as a user meets them: environment variables are listed
in --help and named when their value is bad, the README's CLI table agrees with --help, and
the store commands count windows and refuse a store that is not there."""

from __future__ import annotations

import re
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from farm.store import WindowStore
from scheduler.cli import main

pytestmark = pytest.mark.quick  # no Ray, no render: in scripts/test.sh --quick

README = Path(__file__).resolve().parent.parent / "README.md"


def commands(group: click.Group = main, prefix: str = "") -> dict[str, click.Command]:
    """Every leaf command by its full name, e.g. {"render": …, "store gc": …}."""
    found = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= commands(command, f"{prefix}{name} ")
        else:
            found[prefix + name] = command
    return found


def options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option)]


def long_options(command: click.Command) -> set[str]:
    return {o for p in options(command) for o in p.opts + p.secondary_opts if o.startswith("--")}


def readme_rows() -> dict[str, str]:
    """The README's CLI table: each row's command cell by the command it starts with."""
    section = README.read_text().split("## CLI reference", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for cell in re.findall(r"^\| `farm ([^|`]*(?:\\\|[^|`]*)*)`", section, flags=re.M):
        name = " ".join(w for w in cell.split()[:2] if w.isalpha())
        rows[name if name in commands() else cell.split()[0]] = cell
    return rows


# --- the README's table and --help agree -----------------------------------------------------

@pytest.mark.parametrize("name", sorted(set(commands()) - {"demo"}))
def test_the_readme_table_lists_every_option_and_only_real_ones(name):
    row = readme_rows()[name]
    words = set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", row))
    missing = [p.opts for p in options(commands()[name]) if not words & set(p.opts)]
    assert not missing, (name, missing)
    unknown = {w for w in words if w.startswith("--")} - long_options(commands()[name])
    assert not unknown, (name, unknown)


def test_demo_takes_the_options_of_render_as_the_readme_says():
    assert long_options(commands()["demo"]) == long_options(commands()["render"])
    assert "the other options of farm render" in readme_rows()["demo"]


@pytest.mark.parametrize("name", sorted(commands()))
def test_help_lists_each_options_environment_variable(name):
    command = commands()[name]
    envvars = [p.envvar for p in command.params if isinstance(p, click.Option) and p.envvar]
    result = CliRunner().invoke(main, [*name.split(), "--help"], terminal_width=80)
    text = " ".join(result.output.split())  # help text wraps anywhere
    for var in envvars:
        assert f"env var: {var}" in text, (name, var)
        assert var in README.read_text(), var


# --- a bad value from the environment names the variable ------------------------------------

@pytest.mark.parametrize("var, value, option", [
    ("FARM_WORKERS", "abc", "--workers"), ("FARM_THREADS", "0", "--threads"),
    ("FARM_GPUS_PER_WORKER", "lots", "--gpus-per-worker"),
])
def test_a_bad_environment_value_is_blamed_on_its_variable(tmp_path, var, value, option):
    job = tmp_path / "job.yaml"
    job.write_text("{}")
    result = CliRunner().invoke(main, ["render", str(job)], env={var: value})
    assert result.exit_code == 2
    assert option in result.output and f"set by the environment variable {var}" in result.output


def test_the_same_bad_value_on_the_command_line_does_not_blame_the_environment(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("{}")
    result = CliRunner().invoke(main, ["render", str(job), "--workers", "abc"], env={"FARM_WORKERS": "2"})
    assert result.exit_code == 2 and "--workers" in result.output and "environment" not in result.output


@pytest.mark.parametrize("args", [["--workers", "100000"], ["--threads", "5000"], ["--gpus-per-worker", "1000"]])
def test_actor_options_have_upper_bounds(tmp_path, args):
    job = tmp_path / "job.yaml"
    job.write_text("{}")
    result = CliRunner().invoke(main, ["render", str(job), *args])
    assert result.exit_code == 2 and args[0] in result.output


# --- the store commands ----------------------------------------------------------------------

@pytest.mark.parametrize("command", [["store", "ls"], ["store", "du"], ["store", "gc", "--dry-run"]])
def test_a_store_folder_that_does_not_exist_is_an_error(tmp_path, command):
    missing = tmp_path / "no-such-store"
    result = CliRunner().invoke(main, [*command, "--store", str(missing)])
    assert result.exit_code == 2
    assert "--store" in result.output and "does not exist" in result.output and "0 windows" not in result.output


def _store_with_windows(root: Path, n: int) -> WindowStore:
    store = WindowStore(root)
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    for i in range(n):
        store.put(f"key{i}", frames + i, job="j", index=i, start=i, end=i + 2, attempts=1, node="n", actor="a",
                  seconds=0.1)
    return store


def test_gc_counts_windows_as_ls_does(tmp_path):
    _store_with_windows(tmp_path / "store", 2)
    runner = CliRunner()
    listed = runner.invoke(main, ["store", "ls", "--store", str(tmp_path / "store")])
    assert listed.exit_code == 0 and listed.output.startswith(f"{tmp_path / 'store'}: 2 windows\n")
    dry = runner.invoke(main, ["store", "gc", "--store", str(tmp_path / "store"), "--older-than", "0", "--dry-run"])
    assert dry.exit_code == 0 and dry.output.startswith("would remove 2 windows (")
    gone = runner.invoke(main, ["store", "gc", "--store", str(tmp_path / "store"), "--older-than", "0"])
    assert gone.output.startswith("removed 2 windows (")
    assert WindowStore(tmp_path / "store").entries() == []


def test_gc_counts_leftovers_apart_from_windows(tmp_path):
    import os
    import time

    store = _store_with_windows(tmp_path / "store", 1)
    orphan = store.root / "windows" / "zz" / "zzorphan.arrow"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x" * 100)
    hour_ago = time.time() - 3600
    os.utime(orphan, (hour_ago, hour_ago))
    result = CliRunner().invoke(main, ["store", "gc", "--store", str(store.root), "--dry-run"])
    assert result.output.startswith("would remove 0 windows and 1 leftover file of interrupted writes (")
    assert orphan.exists()
