"""gcp-storage-emulator (PyPI), started as the real server it is, with the two gaps closed that matter to tensorstore
(orbax's gs:// writer), gcsfs and the workdir lock; with them the bucket tests run against an emulator that behaves
like GCS where these clients depend on it.

1. Generations on reads. A GET of an object's media carries `x-goog-generation` / `x-goog-metageneration`, as GCS
   sends them; the emulator 2026.7.19 omits them. tensorstore's gcs_http kvstore takes the generation of every read
   from that header (0 when it is missing) and refuses a conditional write on generation 0 before sending it:
   "Error writing gs://.../manifest.ocdbt: Malformed StorageGeneration". It re-reads an OCDBT manifest it updates only
   when its cache must revalidate the entry, so on the plain emulator a save fails now and then, on whichever host
   re-read (issue #31 case 15: process 0's async save at step 32, a resume at step 64, each after a run of
   successful `ifGenerationMatch=<generation>` updates of the same manifest). Reproduced deterministically by opening
   an OCDBT kvstore a second time and writing (tests/test_family_save_failures.py).
2. Preconditions. `ifGenerationMatch` / `ifGenerationNotMatch` / `ifMetagenerationMatch` / `ifMetagenerationNotMatch`
   are honoured on uploads (media, multipart, resumable), reads (metadata and media) and deletes: a failed condition
   is 412 Precondition Failed (a read whose "not match" condition fails: 304 Not Modified), as GCS answers; the
   emulator answered 200 and wrote, so of two writers each "won" (tensorstore's compare-and-swap of an OCDBT manifest,
   gcsfs's create-only write of the workdir lock with `ifGenerationMatch=0`).

    python tests/gcs_emulator.py start --host=127.0.0.1 --port=PORT --in-memory --default-bucket=B
"""

import sys
from http import HTTPStatus

from gcp_storage_emulator import __main__ as emulator_main, server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


_CONDITIONS = ("ifGenerationMatch", "ifGenerationNotMatch", "ifMetagenerationMatch", "ifMetagenerationNotMatch")


def _object_name(request, storage):
    """The object a request is about: the path's object id, an upload's `name` (query or multipart metadata), or a
    resumable upload session's object."""
    if "object_id" in request.params:
        return request.params["object_id"]
    if request.query.get("upload_id"):
        try:
            return storage.get_resumable_file_obj(request.query["upload_id"][0])["name"]
        except NotFound:
            return None
    if request.query.get("name"):
        return request.query["name"][0]
    data = request.data
    if isinstance(data, dict):
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else data
        return meta.get("name")
    return None


def _failed_condition(request, storage, read: bool):
    """None when the request's preconditions hold (or it has none); else the status GCS answers."""
    given = {c: int(request.query[c][0]) for c in _CONDITIONS if request.query.get(c)}
    if not given:
        return None
    name = _object_name(request, storage)
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], name) if name is not None else None
    except NotFound:
        obj = None
    if obj is None and read:  # reading a missing object: 404 (the handler), or 412 when a generation was required
        return HTTPStatus.PRECONDITION_FAILED if given.get("ifGenerationMatch", 0) != 0 else None
    generation = int(obj["generation"]) if obj is not None else 0  # 0: "no live object"
    metageneration = int(obj["metageneration"]) if obj is not None else None
    if "ifGenerationMatch" in given and given["ifGenerationMatch"] != generation:
        return HTTPStatus.PRECONDITION_FAILED
    if "ifMetagenerationMatch" in given and given["ifMetagenerationMatch"] != metageneration:
        return HTTPStatus.PRECONDITION_FAILED
    if ("ifGenerationNotMatch" in given and given["ifGenerationNotMatch"] == generation) or (
            "ifMetagenerationNotMatch" in given and given["ifMetagenerationNotMatch"] == metageneration):
        return HTTPStatus.NOT_MODIFIED if read else HTTPStatus.PRECONDITION_FAILED
    return None


def _refuse(response, status) -> None:
    response.status = status
    if status == HTTPStatus.PRECONDITION_FAILED:
        response.json({"error": {"code": 412, "message": "At least one of the pre-conditions you specified did not "
                                 "hold.", "errors": [{"reason": "conditionNotMet", "domain": "global",
                                                      "message": "Precondition Failed"}]}})


def _conditional(fn, read: bool):
    def handler(request, response, storage, *args, **kwargs):
        status = _failed_condition(request, storage, read)
        if status is not None:
            return _refuse(response, status)
        return fn(request, response, storage, *args, **kwargs)

    handler.__name__ = fn.__name__
    return handler


_download, _get, _insert, _upload_partial, _delete = (objects.download, objects.get, objects.insert,
                                                      objects.upload_partial, objects.delete)


def _download_with_generation(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # noqa: BLE001  (not found: the response already says 404)
        return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])


PATCHED = {
    _download: _conditional(_download_with_generation, read=True),
    _get: _conditional(_get, read=True),  # metadata, and media through the module's `download` (patched below)
    _insert: _conditional(_insert, read=False),
    _upload_partial: _conditional(_upload_partial, read=False),
    _delete: _conditional(_delete, read=False),
}


def patch() -> None:
    """Installs the handlers above in the emulator's module and routing table; raises if the emulator's layout
    changed so that one of them would silently not apply."""
    objects.download = _download_with_generation  # objects.get(alt=media) calls it (get checked the conditions)
    replaced = set()
    routes = []
    for regex, handlers in server.HANDLERS:
        new = {}
        for method, fn in handlers.items():
            if fn in PATCHED:
                replaced.add(fn)
                fn = PATCHED[fn]
            new[method] = fn
        routes.append((regex, new))
    server.HANDLERS = tuple(routes)
    missing = [fn.__name__ for fn in PATCHED if fn not in replaced]
    if missing:
        raise RuntimeError(f"gcp-storage-emulator's routing changed: {missing} not patched (tests/gcs_emulator.py)")
    # resumable uploads started with POST ...&upload_id= go through insert -> _create_resumable_upload -> upload_partial
    objects.upload_partial = PATCHED[_upload_partial]


patch()

if __name__ == "__main__":
    emulator_main.main(sys.argv[1:])
