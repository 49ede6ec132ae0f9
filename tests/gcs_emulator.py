"""gcp-storage-emulator (PyPI), started as the real server it is, with one gap closed: a GET of an object's media
carries the `x-goog-generation` / `x-goog-metageneration` headers real GCS sends. tensorstore (orbax's gs://
writer) reads them back on every read of an object it wrote (an OCDBT manifest it updates, say) and fails with
"Malformed StorageGeneration" without them; the emulator 2026.7.19 omits them.

    python tests/gcs_emulator.py start --host=127.0.0.1 --port=PORT --in-memory --default-bucket=B
"""

import sys

from gcp_storage_emulator import __main__ as emulator_main, server
from gcp_storage_emulator.handlers import objects


_download = objects.download


def download_with_generation(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # noqa: BLE001  (not found: the response already says 404)
        return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])


objects.download = download_with_generation  # objects.get(alt=media) calls it through the module
server.HANDLERS = tuple((regex, {method: download_with_generation if fn is _download else fn
                                 for method, fn in handlers.items()}) for regex, handlers in server.HANDLERS)

if __name__ == "__main__":
    emulator_main.main(sys.argv[1:])
