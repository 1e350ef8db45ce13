"""The `lo2` command line: a thin front that dispatches to `batch` and `worker`."""
