"""Where meshtrain's files live: a local path or an object-store URL (gs://, s3://), through one type.

paths.py       as_path: the etils.epath.Path of a local path or URL; is_url
atomic.py      write_atomic: readers see the old file or the new one, never half of either
append_log.py  AppendLog: an append-only log that object stores (which cannot append) can hold too
transfer.py    copy_tree, move_tree, stage_locally: for what only reads local files (array_record)
"""
