"""The public path of lsmvec's exception tree (defined once, in ``wal.errors``, the bottom layer)."""
from lsmvec.wal.errors import *  # noqa: F401,F403
from lsmvec.wal.errors import __all__  # noqa: F401
