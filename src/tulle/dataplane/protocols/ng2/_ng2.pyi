"""Types of the cffi module `build.py` compiles (cffi ships no stubs): its `ffi` and `lib`."""

from typing import Any

ffi: Any
lib: Any
