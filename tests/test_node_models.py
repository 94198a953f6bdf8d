"""Staged models and the node cache, without Ray: `farm models stage` to a real S3 API
server (moto, on loopback), fetching under the node's lock, checking against the
manifest, bounded eviction, and the credentials check. The cluster side (one fetch per
node, two actors reading one copy) is in tests/test_node_models_ray.py."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner

from farm.identity import ref_identity
from farm.models.nodecache import NodeCache
from farm.models.remote import MANIFEST, ModelSourceError, check_credentials, read_manifest, stage
from farm.models.tiny import TINY_MOTION_ADAPTER, tiny_model_path
from farm.outputs import filesystem
from scheduler.cli import main
from tests.ray_heads import point_aws_at, start_s3_server


@pytest.fixture(scope="module")
def s3_server():
    """One S3 server for the module (each test uses its own prefixes); AWS_* point at it."""
    server = start_s3_server()
    with pytest.MonkeyPatch.context() as mp:
        point_aws_at(server, mp)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def staged(s3_server, request):
    """The tiny motion adapter's folder, staged under a prefix of the test's own."""
    uri = f"s3://{s3_server.bucket}/{request.node.name}/adapter"
    manifest = stage(str(tiny_model_path(TINY_MOTION_ADAPTER)), uri)
    return uri, manifest


def _weights(manifest) -> str:
    return next(f.path for f in manifest.files if f.path.endswith(".safetensors"))


def test_stage_writes_every_file_and_a_manifest_that_gives_the_local_folders_key(staged, s3_server):
    uri, manifest = staged
    folder = tiny_model_path(TINY_MOTION_ADAPTER)
    local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted(f.path for f in manifest.files) == local
    for f in manifest.files:
        assert f.size == (folder / f.path).stat().st_size
    assert read_manifest(uri).files == manifest.files
    # the same key from the folder on disk and from its staged copy: the store is shared
    assert ref_identity(uri, TINY_MOTION_ADAPTER) == ref_identity(str(folder), TINY_MOTION_ADAPTER)


def test_the_cli_stages_a_single_file_and_says_where(s3_server, tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(bytes(range(256)) * 40)
    uri = f"s3://{s3_server.bucket}/models/one-file"
    result = CliRunner().invoke(main, ["models", "stage", str(model), "--to", uri, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "file" and data["files"][0] == {
        "path": "model.safetensors", "size": 10240, "sha256": ref_identity(uri, "").split(":")[1]}


def test_a_node_fetches_once_and_every_later_actor_reads_the_same_copy(staged, s3_server, tmp_path):
    uri, manifest = staged
    cache = NodeCache(tmp_path / "node")
    leases = [None] * 3

    def take(i):  # three actors of one node starting at once
        leases[i] = cache.acquire(read_manifest(uri))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(lease.source for lease in leases) == ["node cache", "node cache", "object storage"]
    assert len({lease.path for lease in leases}) == 1
    assert sum(lease.fetch_bytes for lease in leases) == manifest.total_bytes
    key = f"{uri.removeprefix('s3:/')}/{_weights(manifest)}"
    assert s3_server.requests("GET", key) == 1
    assert ref_identity(str(leases[0].path), TINY_MOTION_ADAPTER) == manifest.identity


def test_a_truncated_object_is_fetched_again_then_named(staged, s3_server, tmp_path):
    uri, manifest = staged
    name = _weights(manifest)
    fs, path = filesystem(f"{uri}/{name}")
    with fs.open_input_stream(path) as f:
        whole = f.read()
    with fs.open_output_stream(path) as f:
        f.write(whole[: len(whole) // 2])
    cache = NodeCache(tmp_path / "node")
    gets = s3_server.requests("GET", f"{uri.removeprefix('s3:/')}/{name}")
    with pytest.raises(ModelSourceError) as err:
        cache.acquire(read_manifest(uri))
    message = str(err.value)
    assert f"{uri}/{name}" in message and "2 times" in message and "stage the model again" in message
    assert s3_server.requests("GET", f"{uri.removeprefix('s3:/')}/{name}") - gets == 2
    assert cache.entries() == []  # nothing half-fetched is taken for a copy
    with fs.open_output_stream(path) as f:  # put right: the next actor fetches it whole
        f.write(whole)
    assert cache.acquire(read_manifest(uri)).source == "object storage"


def test_the_cache_drops_the_least_recently_used_model_but_never_one_in_use(s3_server, tmp_path):
    sizes = {}
    for name in ("a", "b", "c", "d"):
        model = tmp_path / f"{name}.safetensors"
        model.write_bytes(name.encode() * 1000)
        sizes[name] = stage(str(model), f"s3://{s3_server.bucket}/models/{name}").total_bytes
    cache = NodeCache(tmp_path / "node", limit_bytes=2500)  # room for two
    held = cache.acquire(read_manifest(f"s3://{s3_server.bucket}/models/a"))  # in use all along
    b = cache.acquire(read_manifest(f"s3://{s3_server.bucket}/models/b"))
    b.release()
    c = cache.acquire(read_manifest(f"s3://{s3_server.bucket}/models/c"))  # over the bound: b goes, not a
    c.release()
    names = sorted(e["uri"].rsplit("/", 1)[1] for e in cache.entries())
    assert names == ["a", "c"], names
    cache.acquire(read_manifest(f"s3://{s3_server.bucket}/models/d")).release()  # c is older than d: c goes
    assert sorted(e["uri"].rsplit("/", 1)[1] for e in cache.entries()) == ["a", "d"]
    assert held.path.read_bytes() == b"a" * 1000
    assert [e["in_use"] for e in cache.entries() if e["uri"].endswith("/a")] == [True]
    held.release()


def test_no_credentials_is_one_line_that_names_the_variable(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_SHARED_CREDENTIALS_FILE", "FARM_STORAGE_AMBIENT_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ModelSourceError) as err:
        check_credentials("s3://bucket/models/x", "model.base")
    message = str(err.value)
    assert "\n" not in message and message.startswith("model.base: ") and "AWS_ACCESS_KEY_ID" in message
    with pytest.raises(ModelSourceError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        check_credentials("gs://bucket/models/x", "control.model")


def test_a_prefix_without_a_manifest_says_how_to_stage_it(s3_server):
    with pytest.raises(ModelSourceError) as err:
        read_manifest(f"s3://{s3_server.bucket}/models/never", "model.vae")
    assert str(err.value).startswith("model.vae: ") and MANIFEST in str(err.value)
    assert "farm models stage" in str(err.value)


def test_a_staged_single_file_keys_and_renders_as_the_local_file(s3_server, tmp_path, request):
    """A checkpoint file staged to S3: the same window key as the file on disk (its
    sha256, and model.config since it is a single file), and the actor's copy, fetched
    into the node cache, renders the same frames."""
    import torch

    from farm.models.sources import check_sources, localize
    from farm.models.tiny_files import tiny_file_path
    from tests.test_model_files import _key, _render, _spec

    checkpoint = tiny_file_path("sd15")
    uri = f"s3://{s3_server.bucket}/{request.node.name}/sd15"
    stage(str(checkpoint), uri)
    local = _spec(tmp_path, {"base": str(checkpoint), "config": "tiny"})
    staged = _spec(tmp_path, {"base": uri, "config": "tiny"})
    assert _key(staged) == _key(local)
    assert _key(staged) != _key(_spec(tmp_path, {"base": uri, "config": "sd15"}))  # the config counts
    assert check_sources(staged) == {"model.base": uri}

    here, fetched = localize(staged, lambda: NodeCache(tmp_path / "node"))
    assert fetched.sources == {"model.base": "object storage", "model.motion_adapter": "local"}
    assert here.model.base.endswith(checkpoint.name) and fetched.bytes == checkpoint.stat().st_size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _render(here).tobytes() == _render(local).tobytes()
    finally:
        torch.set_num_threads(threads)
    fetched.release()
