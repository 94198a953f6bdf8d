"""Outputs on object storage: `output: s3://bucket/key.mp4` or `gs://bucket/key.mp4`.

The driver never streams into a bucket. It writes the mp4 and its report into a local
temporary folder exactly as for a local output, and only when the video is complete does
`staged_output` upload it, then the report:

    with staged_output(spec.output) as local:   # a local path, or a temp file for a URI
        ...write local, and report_path(local)...
    # clean exit: local → s3://…/key.mp4, then local.report.json → s3://…/key.mp4.report.json

A reader never sees a half video under the final key: each file goes first to a hidden
temporary key next to it (`.key.mp4.<random>.part`) and is then copied server-side onto
the final key (S3 CopyObject, GCS rewrite), which appears whole or not at all; the
temporary key is deleted either way. The report is uploaded after the video, so a report
under the final key means its video is there too (other companions, such as the HTML
report, go between the two). A failed job uploads its reports only (the previous video
under the key, if any, is left alone), as for local outputs.
Limitation: S3 copies one object in a single CopyObject, so an S3 output must stay under
5 GiB.

Where the bytes go (pyarrow.fs):

- `s3://`: the standard AWS variables. Credentials: AWS_ACCESS_KEY_ID,
  AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN), else ~/.aws, else the instance profile.
  An S3-compatible server (MinIO, moto, R2, …): AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL,
  e.g. `http://127.0.0.1:9000`. pyarrow's `FileSystem.from_uri` reads those two variables
  itself (pyarrow 26 does), but the `S3FileSystem()` constructor does not, so this module
  reads them and passes `endpoint_override=host:port` and `scheme=http|https` explicitly
  (path-style addressing, as such servers expect); the region is AWS_REGION or
  AWS_DEFAULT_REGION (default us-east-1). Without an endpoint override, `from_uri` is used:
  it finds the bucket's region by itself.
- `gs://` (or `gcs://`): Google's application-default credentials
  (GOOGLE_APPLICATION_CREDENTIALS, gcloud, or the VM's service account).

This module does not import Ray.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from farm.errors import EncodeError

#: URI schemes an output may use.
SCHEMES = ("s3", "gs", "gcs")
_CHUNK = 8 * 1024 * 1024
_CONTENT_TYPES = {".mp4": "video/mp4", ".json": "application/json", ".html": "text/html"}


def is_uri(value: str) -> bool:
    """True for anything written `scheme://…` (supported or not); False for a plain path.

    `check_output_uri` then says whether the scheme is one the farm can write."""
    head, sep, _ = str(value).partition("://")
    return bool(sep) and len(head) > 1 and head.replace("+", "").replace("-", "").replace(".", "").isalnum()


def check_output_uri(uri: str) -> str:
    """Validate an output URI: a supported scheme, a bucket, a key ending in .mp4, no
    query or fragment. Returns it unchanged; raises ValueError saying what is wrong
    (so it fits a pydantic validator, like `farm.spec.check_output`)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(
            f"output {uri!r}: unsupported storage scheme {parts.scheme + '://'!r}; "
            "use a local path, s3://bucket/key.mp4 or gs://bucket/key.mp4"
        )
    if parts.query or parts.fragment:
        raise ValueError(
            f"output {uri!r}: no ?query or #fragment in an output URI; set the S3 endpoint "
            "with AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL instead"
        )
    key = parts.path.lstrip("/")
    if not parts.netloc:
        raise ValueError(f"output {uri!r}: no bucket; write {scheme}://BUCKET/path/video.mp4")
    if not key or key.endswith("/"):
        raise ValueError(f"output {uri!r}: no object key; write {scheme}://{parts.netloc}/path/video.mp4")
    if not key.lower().endswith(".mp4"):
        raise ValueError(f"output must end in .mp4 (the farm writes H.264 in mp4); got {uri!r}")
    return uri


#: seconds an S3-compatible server (AWS_ENDPOINT_URL_S3) may take to answer one request
S3_REQUEST_TIMEOUT_S = 120.0


def filesystem(uri: str):
    """(pyarrow FileSystem, path inside it) for a supported URI; see the module docstring
    for the environment variables that choose the endpoint and credentials."""
    import pyarrow.fs as pafs

    scheme, _, rest = uri.partition("://")
    scheme = scheme.lower()
    try:
        if scheme == "s3":
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:
                parsed = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
                region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
                # an S3-compatible server can take longer than pyarrow's default request
                # timeout (a few seconds) to complete the multipart upload of a 2 GB file
                fs = pafs.S3FileSystem(endpoint_override=parsed.netloc, scheme=parsed.scheme, region=region,
                                       request_timeout=S3_REQUEST_TIMEOUT_S)
                return fs, rest
        if scheme == "gcs":
            uri = "gs://" + rest
        return pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as err:
        raise EncodeError(f"cannot open {uri}: {err}") from err


def check_destination(uri: str) -> None:
    """Fail early, before any rendering, if the bucket cannot be seen with the credentials
    at hand, or the key is a folder. Raises EncodeError."""
    fs, path = filesystem(check_output_uri(uri))
    import pyarrow.fs as pafs

    bucket = path.split("/", 1)[0]
    try:
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise EncodeError(f"bucket {bucket!r} of {uri} does not exist (or these credentials cannot see it)")
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            raise EncodeError(f"output {uri} is a folder, not an object key")
    except OSError as err:
        raise EncodeError(f"cannot reach the bucket of {uri}: {err}") from err


def upload_file(local: str | Path, uri: str) -> None:
    """Copy a complete local file to `uri`: to a hidden temporary key first, then a
    server-side copy onto the final key, which appears whole or not at all."""
    fs, path = filesystem(uri)
    parent, _, name = path.rpartition("/")
    tmp = f"{parent}/.{name}.{secrets.token_hex(6)}.part"
    meta = {"Content-Type": _CONTENT_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")}
    try:
        with open(local, "rb") as src, fs.open_output_stream(tmp, metadata=meta) as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
        fs.copy_file(tmp, path)
    except OSError as err:
        raise EncodeError(f"cannot upload {local} to {uri}: {err}") from err
    finally:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass  # never created, or already gone


def read_bytes(uri: str) -> bytes:
    """The whole object at `uri` (for checks and tests; videos can be large)."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except OSError as err:
        raise EncodeError(f"cannot read {uri}: {err}") from err


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    try:
        return fs.get_file_info(path).type == pafs.FileType.File
    except OSError as err:
        raise EncodeError(f"cannot reach {uri}: {err}") from err


def _companions(local: Path) -> list[Path]:
    """Files the driver wrote next to the video (`NAME.mp4.report.json`, `….report.html`, …),
    the JSON report last: it is the sign that everything before it is in place."""
    files = [p for p in local.parent.iterdir()
             if p.is_file() and p.name.startswith(local.name + ".") and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (p.name.endswith(".report.json"), p.name))


@contextmanager
def staged_output(output: str) -> Iterator[Path]:
    """Yield the local path the driver writes the mp4 to; its report and any other
    companion (`<path>.report.json`, `<path>.report.html`, …) go next to it.

    A local `output` is yielded as is and nothing else happens (the writer and the report
    are atomic already). For a URI, the path is in a fresh temporary folder; on a clean
    exit the video is uploaded to `output`, then each companion to `output + suffix`, the
    JSON report last. If the block raises, only the companions are uploaded (a failed
    job's report), never the video, and the error goes on. The folder is removed either
    way. Upload failures raise EncodeError."""
    if not is_uri(output):
        yield Path(output)
        return
    check_output_uri(output)
    folder = Path(tempfile.mkdtemp(prefix="farm-out-"))
    local = folder / Path(urlsplit(output).path).name
    try:
        try:
            yield local
        except BaseException:
            for extra in _companions(local):
                try:
                    upload_file(extra, output + extra.name[len(local.name):])
                except EncodeError:
                    pass  # the job's own error matters more
            raise
        if not local.is_file():
            raise EncodeError(f"the driver wrote no video to upload to {output}")
        upload_file(local, output)
        for extra in _companions(local):
            upload_file(extra, output + extra.name[len(local.name):])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
