"""Loads the compiled extension rlhf_fast._C once; importing it registers torch.ops.rlhf_fast.*."""

try:
    from rlhf_fast import _C  # noqa: F401  (registers the dispatcher ops)

    EXT_ERROR = None
except ImportError as exc:  # not built, or built against another torch
    _C = None
    EXT_ERROR = f"rlhf_fast._C could not be imported ({exc}); reinstall with `pip install --no-build-isolation -e .`"


def ext_available() -> bool:
    return _C is not None


def cuda_built() -> bool:
    return _C is not None and _C.cuda_built()
