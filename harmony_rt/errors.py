"""The one exception type the runtime raises for bad input, bad bundles and bad media."""

# Every character str.splitlines() breaks at, shown escaped: a message naming a file called "a\rb" stays one line.
_LINE_BREAKS = {c: repr(chr(c))[1:-1] for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)}


def one_line(text: object, limit: int | None = None) -> str:
    """A library's message on one line (whitespace runs collapsed), cut to `limit` characters with '...'."""
    text = " ".join(str(text).split()) or "unknown error"
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


class HarmonyError(Exception):
    """A problem the user can fix (bad argument, bad file, bad bundle). The CLI prints it on one line, exit
    `exit_code` (2: a usage error).

    `str()` of it is always one line: line-break characters in the message (from file names, captions,
    library messages) are shown escaped."""

    exit_code = 2

    def __str__(self) -> str:
        return super().__str__().translate(_LINE_BREAKS)


class BundleError(HarmonyError):
    """A bundle that is missing, corrupt, unsafe or inconsistent with its manifest."""


class MediaError(HarmonyError):
    """An input media file that cannot be used (unreadable, empty, wrong kind)."""


class DiskError(MediaError):
    """An output the machine could not store (a full disk, an I/O error): not a usage error, so exit 1."""

    exit_code = 1


class Cancelled(HarmonyError):
    """Generation stopped because the progress callback returned False."""
