"""The one exception type the runtime raises for bad input, bad bundles and bad media."""


class HarmonyError(Exception):
    """A problem the user can fix (bad argument, bad file, bad bundle). The CLI prints it on one line, exit 2."""


class BundleError(HarmonyError):
    """A bundle that is missing, corrupt, unsafe or inconsistent with its manifest."""


class MediaError(HarmonyError):
    """An input media file that cannot be used (unreadable, empty, wrong kind)."""


class Cancelled(HarmonyError):
    """Generation stopped because the progress callback returned False."""
